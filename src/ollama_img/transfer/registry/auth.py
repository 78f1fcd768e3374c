"""Registry credentials, and the two ways registries ask for them: HTTP basic and the bearer-token challenge.

Where credentials come from (the first that has some for the registry's host wins):

1. `OLLAMA_IMG_REGISTRY_TOKEN`: a bearer token, sent as it is;
2. `OLLAMA_IMG_REGISTRY_USER` and `OLLAMA_IMG_REGISTRY_PASSWORD`;
3. docker's config file (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`), what `docker login`
   writes: `credHelpers` for the host, its `auths` entry (`auth`, `username`/`password`, `identitytoken`),
   then `credsStore`.

The environment's credentials go to whichever registry the command names, so set them for that command.
Credentials are sent only when a registry answers 401 with a challenge, only over HTTPS unless the client
allows plain HTTP for that host, and are never printed: messages say where they came from, not what they are.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ollama_img.errors import UserError

if TYPE_CHECKING:
    import httpx

ENV_USER = "OLLAMA_IMG_REGISTRY_USER"
ENV_PASSWORD = "OLLAMA_IMG_REGISTRY_PASSWORD"
ENV_TOKEN = "OLLAMA_IMG_REGISTRY_TOKEN"

# Docker Hub is known under several names; `docker login` files it under the first.
_DOCKER_HUB = ("https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io", "docker.io")
_HELPER_TIMEOUT = 30  # seconds a docker credential helper may take (it may ask a keychain)
_MAX_TOKEN_RESPONSE = 1 << 20
_CHALLENGE_PARAM = re.compile(r'([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


@dataclass(frozen=True)
class Credentials:
    """What to authenticate with, and where it came from (for messages). Secrets never appear in repr."""

    source: str  # "OLLAMA_IMG_REGISTRY_USER", "/home/me/.docker/config.json", "docker-credential-pass"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)  # a bearer token, sent as it is
    identity_token: str | None = field(default=None, repr=False)  # an OAuth2 refresh token (docker login)

    def describe(self) -> str:
        who = f"of user '{self.username}' " if self.username else ""
        return f"the credentials {who}from {self.source}"


def find_credentials(host: str) -> Credentials | None:
    """The credentials for a registry host, from the environment or docker's config, or None."""
    token = os.environ.get(ENV_TOKEN)
    if token:
        return Credentials(ENV_TOKEN, token=token)
    user, password = os.environ.get(ENV_USER), os.environ.get(ENV_PASSWORD)
    if user or password:
        if not (user and password):
            raise UserError(f"set both {ENV_USER} and {ENV_PASSWORD} (only one is set)")
        return Credentials(ENV_USER, username=user, password=password)
    return _from_docker_config(host)


def docker_config_path() -> Path:
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder).expanduser() / "config.json" if folder else Path.home() / ".docker" / "config.json"


def _from_docker_config(host: str) -> Credentials | None:
    path = docker_config_path()
    try:
        config = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read docker's config {path}: {exc}") from None
    if not isinstance(config, dict):
        raise UserError(f"docker's config {path} is not a JSON object")
    keys = _config_keys(host)
    helpers = config.get("credHelpers") if isinstance(config.get("credHelpers"), dict) else {}
    for key in keys:
        if isinstance(helpers.get(key), str):
            return _from_helper(helpers[key], key)
    auths = config.get("auths") if isinstance(config.get("auths"), dict) else {}
    for entry_key, entry in auths.items():
        if _normalise_key(entry_key) in {_normalise_key(k) for k in keys} and isinstance(entry, dict):
            found = _from_auths_entry(entry, str(path))
            if found is not None:
                return found
    if isinstance(config.get("credsStore"), str):
        return _from_helper(config["credsStore"], keys[0])
    return None


def _config_keys(host: str) -> list[str]:
    """The keys docker's config may file a host under, the most usual first."""
    return list(_DOCKER_HUB) if host in _DOCKER_HUB else [host]


def _normalise_key(key: str) -> str:
    """`https://registry.example:5000/v1/` -> `registry.example:5000` (docker's config keys vary so)."""
    key = re.sub(r"^[a-z]+://", "", key.strip().lower())
    key = key.split("/", 1)[0]
    return "index.docker.io" if key in _DOCKER_HUB or key + "/" in _DOCKER_HUB else key


def _from_auths_entry(entry: dict, source: str) -> Credentials | None:
    if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
        user = _decode_auth(entry.get("auth"), source)[0] if entry.get("auth") else entry.get("username")
        return Credentials(source, username=user, identity_token=entry["identitytoken"])
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        user, password = _decode_auth(entry["auth"], source)
        return Credentials(source, username=user, password=password)
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(source, username=entry["username"], password=entry["password"])
    return None


def _decode_auth(value, source: str) -> tuple[str, str]:
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (ValueError, TypeError):
        sep = ""
    if not sep:
        raise UserError(f"an 'auth' entry in {source} is not base64 of 'user:password'")
    return user, password


def _from_helper(helper: str, server: str) -> Credentials | None:
    """Ask `docker-credential-<helper> get`, as docker does; None when it has nothing for the server."""
    program = f"docker-credential-{helper}"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", helper):
        raise UserError(f"docker's config names an invalid credential helper {helper!r}")
    try:
        done = subprocess.run(
            [program, "get"], input=server.encode(), capture_output=True, timeout=_HELPER_TIMEOUT, check=False
        )
    except FileNotFoundError:
        return None
    except subprocess.TimeoutExpired:
        raise UserError(f"{program} did not answer within {_HELPER_TIMEOUT} s") from None
    if done.returncode != 0:
        return None  # "credentials not found": nothing stored for this server
    try:
        answer = json.loads(done.stdout)
        user, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{program} gave an answer that is not its JSON") from None
    if user == "<token>":
        return Credentials(program, identity_token=secret)
    return Credentials(program, username=user, password=secret)


@dataclass(frozen=True)
class Challenge:
    """A parsed `WWW-Authenticate` header: the scheme ("bearer", "basic") and its parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenge(header: str | None) -> Challenge | None:
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for match in _CHALLENGE_PARAM.finditer(rest):
        value = match.group(2) if match.group(2) is not None else match.group(3)
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return Challenge(scheme.lower(), params)


def repository_scope(repository: str, push: bool = False) -> str:
    return f"repository:{repository}:{'pull,push' if push else 'pull'}"


class AuthError(UserError):
    """A registry or its token service refused us, or wants credentials we do not have."""

    status = 401


class Authenticator:
    """Turns a registry's 401 challenges into `Authorization` headers, and remembers them.

    `may_send(url)` says whether credentials may travel to a URL (HTTPS, or plain HTTP to a host the
    client allows it for). `credentials` is looked up on the first challenge, never before.
    """

    def __init__(
        self,
        host: str,
        http: httpx.Client,
        may_send: Callable[[str], bool],
        lookup: Callable[[str], Credentials | None] = find_credentials,
    ):
        self.host = host
        self._http = http
        self._may_send = may_send
        self._lookup = lookup
        self._looked_up = False
        self._credentials: Credentials | None = None
        self._basic: str | None = None
        self._tokens: dict[frozenset[str], str] = {}

    @property
    def credentials(self) -> Credentials | None:
        if not self._looked_up:
            self._credentials = self._lookup(self.host)
            self._looked_up = True
        return self._credentials

    def header(self, scopes: tuple[str, ...]) -> str | None:
        """The Authorization header already known to work for these scopes, if any."""
        if self._basic is not None:
            return self._basic
        return self._tokens.get(frozenset(scopes))

    def answer(self, challenge_header: str | None, scopes: tuple[str, ...], url: str, refused: bool) -> str:
        """An Authorization header for a request the registry answered 401 with this challenge.

        `refused` is True when the request already carried one: then the credentials are wrong (basic, a
        static token), or the token has expired (bearer: one fresh token is tried).
        """
        challenge = parse_challenge(challenge_header)
        credentials = self.credentials
        if credentials is not None and credentials.token:
            if refused:
                raise AuthError(f"registry {self.host} refused {credentials.describe()}")
            self._check_may_send(url, credentials)
            self._basic = f"Bearer {credentials.token}"
            return self._basic
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            scheme = challenge.scheme if challenge else "none"
            raise AuthError(
                f"registry {self.host} asks for an authentication scheme ollama-img lacks ({scheme})"
            )
        if challenge.scheme == "basic":
            if credentials is None or credentials.password is None:
                raise self.needs_credentials()
            if refused:
                raise AuthError(f"registry {self.host} refused {credentials.describe()}")
            self._check_may_send(url, credentials)
            pair = f"{credentials.username}:{credentials.password}".encode()
            self._basic = "Basic " + base64.b64encode(pair).decode("ascii")
            return self._basic
        key = frozenset(scopes)
        if refused and key not in self._tokens:
            raise AuthError(f"registry {self.host} refused the token its token service gave us")
        self._tokens.pop(key, None)
        token = self._fetch_token(challenge, scopes)
        self._tokens[key] = f"Bearer {token}"
        return self._tokens[key]

    def _fetch_token(self, challenge: Challenge, scopes: tuple[str, ...]) -> str:
        """Ask the challenge's realm for a token covering `scopes` (and the scope the challenge names)."""
        import httpx

        realm = challenge.params.get("realm")
        if not realm or not realm.lower().startswith(("https://", "http://")):
            raise AuthError(f"registry {self.host} sent a bearer challenge without a usable realm")
        wanted = list(dict.fromkeys([*scopes, *challenge.params.get("scope", "").split()]))
        wanted = [scope for scope in wanted if scope]
        service = [("service", challenge.params["service"])] if "service" in challenge.params else []
        params = service + [("scope", scope) for scope in wanted]
        credentials = self.credentials
        where = f"the token service of registry {self.host} ({_origin(realm)})"
        try:
            if credentials is not None and (credentials.identity_token or credentials.password):
                self._check_may_send(realm, credentials)
            if credentials is not None and credentials.identity_token:
                form = dict(service) | {
                    "grant_type": "refresh_token",
                    "refresh_token": credentials.identity_token,
                    "client_id": "ollama-img",
                    "scope": " ".join(wanted),
                }
                response = self._http.post(realm, data=form)
            elif credentials is not None and credentials.password is not None:
                response = self._http.get(
                    realm, params=params, auth=(credentials.username, credentials.password)
                )
            else:
                response = self._http.get(realm, params=params)
        except httpx.HTTPError as exc:
            raise UserError(f"cannot reach {where}: {exc}") from None
        if response.status_code in (401, 403):
            if credentials is None:
                raise self.needs_credentials()
            raise AuthError(f"{where} refused {credentials.describe()}")
        if response.status_code != 200:
            raise UserError(f"{where} answered HTTP {response.status_code}")
        try:
            body = json.loads(response.content[:_MAX_TOKEN_RESPONSE])
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise UserError(f"{where} answered without a token")
        return token

    def _check_may_send(self, url: str, credentials: Credentials) -> None:
        if not self._may_send(url):
            raise UserError(
                f"not sending {credentials.describe()} over plain HTTP to {_origin(url)}; "
                "use HTTPS, or --insecure if you trust the network"
            )

    def needs_credentials(self) -> AuthError:
        return AuthError(
            f"registry {self.host} requires authentication: set {ENV_USER} and {ENV_PASSWORD} "
            f"(or {ENV_TOKEN}), or log in with 'docker login {self.host}'"
        )


def _origin(url: str) -> str:
    match = re.match(r"^([a-z]+://[^/?#]+)", url, re.I)
    return match.group(1) if match else url
