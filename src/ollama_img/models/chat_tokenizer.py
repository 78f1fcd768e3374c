"""The prompt as a chat-model text encoder sees it: the model's own chat template, then its tokenizer.

The template is rendered the way transformers renders chat templates (a sandboxed Jinja environment
with trimmed blocks and the same helper functions), so the token ids match diffusers' exactly.
Families differ in the template's `enable_thinking` switch (Z-Image on, FLUX.2 [klein] off) and in how
many tokens the encoder takes.
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from ollama_img.errors import UserError

MAX_TOKENS = 512  # diffusers' max_sequence_length for Z-Image and FLUX.2


class PromptTruncatedWarning(UserWarning):
    """The templated prompt was longer than the text encoder's window and was cut."""


def _raise(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _special_token(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


class ChatTokenizer:
    def __init__(
        self,
        tokenizer_json: str,
        tokenizer_config: dict,
        chat_template: str | None = None,
        *,
        enable_thinking: bool = True,
        max_tokens: int = MAX_TOKENS,
    ):
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.enable_thinking = enable_thinking
        self.max_tokens = max_tokens
        template = chat_template or tokenizer_config.get("chat_template")
        if isinstance(template, list):  # named templates: use the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if not template:
            raise ValueError("the tokenizer has no chat template")
        self.template = _environment().from_string(template)
        self.special_tokens = {
            key: _special_token(tokenizer_config.get(key))
            for key in ("bos_token", "eos_token", "unk_token", "pad_token")
            if tokenizer_config.get(key) is not None
        }

    @property
    def pad_id(self) -> int | None:
        """The id of the pad token (for encoders that take prompts padded to a fixed length)."""
        pad = self.special_tokens.get("pad_token")
        return None if pad is None else self.tokenizer.token_to_id(pad)

    def render(self, prompt: str) -> str:
        """The user prompt as one user message, with the generation prompt, as diffusers' pipelines wrap it."""
        return self.template.render(
            messages=[{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            enable_thinking=self.enable_thinking,
            **self.special_tokens,
        )

    def encode(self, prompt: str) -> list[int]:
        """Token ids of the templated prompt, at most `max_tokens` (a warning says when it was cut)."""
        ids = self.tokenizer.encode(self.render(prompt)).ids
        if len(ids) > self.max_tokens:
            warnings.warn(
                f"prompt is {len(ids)} tokens with its template; only the first {self.max_tokens} are used",
                PromptTruncatedWarning,
                stacklevel=2,
            )
            ids = ids[: self.max_tokens]
        return ids


def load_tokenizer(source, component: str = "tokenizer", **options) -> ChatTokenizer:
    """The chat tokenizer of a model's `component` folder (`options` as `ChatTokenizer` takes them)."""
    config = source.read_json(f"{component}/tokenizer_config.json")
    tokenizer_json = source.read_text(f"{component}/tokenizer.json")
    if tokenizer_json is None:
        raise UserError(f"{source.label}: {component}/tokenizer.json is missing")
    try:
        return ChatTokenizer(
            tokenizer_json, config, source.read_text(f"{component}/chat_template.jinja"), **options
        )
    except Exception as exc:
        raise UserError(f"{source.label}: cannot load the tokenizer ({exc})") from None
