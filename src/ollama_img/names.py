"""Model names as ollama spells them: `[host/][namespace/]model[:tag]`."""

import re
from dataclasses import dataclass

from ollama_img.errors import UserError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_HOST = re.compile(r"^[a-z0-9][a-z0-9._-]{0,253}(:[0-9]{1,5})?$")
_PART = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,79}$")
_TAG = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,79}$")


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> "ModelName":
        """Parse and normalise a name (names are case-insensitive, as in ollama)."""
        raw = text.strip().lower()
        if not raw:
            raise UserError("invalid model name: the name is empty")
        tag = DEFAULT_TAG
        head, sep, tail = raw.rpartition(":")
        if sep and "/" not in tail:
            raw, tag = head, tail
        parts = raw.split("/")
        if len(parts) > 3 or any(not p for p in parts):
            raise UserError(f"invalid model name {text!r}: expected [host/][namespace/]model[:tag]")
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
        if len(parts) == 3:
            host, namespace, model = parts
        elif len(parts) == 2:
            namespace, model = parts
        else:
            (model,) = parts
        checks = (
            (_HOST, host, "host"),
            (_PART, namespace, "namespace"),
            (_PART, model, "model"),
            (_TAG, tag, "tag"),
        )
        for pattern, value, what in checks:
            if not pattern.match(value) or ".." in value:
                raise UserError(
                    f"invalid model name {text!r}: bad {what} {value!r} "
                    "(letters, digits, '_', '-' and '.', starting with a letter or digit)"
                )
        return cls(host, namespace, model, tag)

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def __str__(self) -> str:
        """The short form ollama shows: defaults left out, the tag always shown."""
        prefix = ""
        if self.host != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"
