"""Errors a user can cause. The CLI prints them as one line; the HTTP API maps them to 4xx."""


class UserError(Exception):
    """Something the user asked for cannot be done; the message says what and, if possible, how to fix it."""

    status = 400


class NotFound(UserError):
    """A model (or another named thing) does not exist."""

    status = 404
