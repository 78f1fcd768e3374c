"""What `pull` (and `run`) is asked for: a Hugging Face repository or a registry model name.

`hf.co/ORG/REPO[:REVISION]` (or `huggingface.co/...`) is a Hugging Face repository; anything else is a
store name, whose host is the registry. Cheap to import: the CLI parses names before anything else.
"""

import re
from dataclasses import dataclass

from ollama_img.errors import UserError
from ollama_img.names import DEFAULT_TAG, ModelName

HUB_HOSTS = ("hf.co", "huggingface.co")
_NAME = r"[A-Za-z0-9][\w.-]{0,95}"
_REVISION = r"\w[\w./-]{0,255}"  # a branch, a tag or a commit (`refs/pr/1` too)
_HUB = re.compile(rf"^(?:https?://)?(hf\.co|huggingface\.co)/({_NAME})/({_NAME})(?::({_REVISION}))?$", re.I)


@dataclass(frozen=True)
class HubRef:
    """A Hugging Face model repository at a revision (a branch, a tag or a commit)."""

    repo_id: str  # "Tongyi-MAI/Z-Image-Turbo", as the Hub spells it
    revision: str | None  # None: the default branch ("main")

    def __str__(self) -> str:
        return f"hf.co/{self.repo_id}" + (f":{self.revision}" if self.revision else "")

    def store_name(self, quantize: str | None = None) -> ModelName:
        """The name a pull stores it under without --as: `hf.co/org/repo:revision`, `-TYPE` when quantized."""
        org, repo = self.repo_id.split("/")
        tag = self.revision or DEFAULT_TAG
        if quantize:
            tag = f"{self.revision}-{quantize}" if self.revision else quantize
        try:
            return ModelName.parse(f"hf.co/{org}/{repo}:{tag}")
        except UserError:
            raise UserError(
                f"'{self}' does not make a model name by itself; give one with --as NAME"
            ) from None


def is_hub_name(text: str) -> bool:
    return _HUB.match(text.strip()) is not None


def parse_hub_ref(text: str) -> HubRef:
    match = _HUB.match(text.strip())
    if match is None or ".." in text:
        raise UserError(f"invalid Hugging Face name {text!r}: expected hf.co/ORG/REPO[:REVISION]")
    _, org, repo, revision = match.groups()
    return HubRef(f"{org}/{repo}", revision)


def parse_target(text: str) -> HubRef | ModelName:
    """A Hugging Face repository, or a store name (a registry model)."""
    if text.strip().lower().startswith(tuple(f"{host}/" for host in HUB_HOSTS)) or "://" in text:
        return parse_hub_ref(text)
    return ModelName.parse(text)
