"""The prompt as Z-Image's text encoder sees it: the model's own chat template, then its tokenizer.

The template is rendered the way transformers renders chat templates (a sandboxed Jinja environment
with trimmed blocks and the same helper functions), so the token ids match diffusers' exactly.
"""

import json
import warnings
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

MAX_TOKENS = 512  # diffusers' max_sequence_length for Z-Image


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


class PromptTokenizer:
    def __init__(self, tokenizer_json: str, tokenizer_config: dict, chat_template: str | None = None):
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
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

    def render(self, prompt: str, enable_thinking: bool = True) -> str:
        """The user prompt wrapped as ZImagePipeline wraps it (generation prompt on, thinking on unless
        turned off, as Flux2KleinPipeline does)."""
        return self.template.render(
            messages=[{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            enable_thinking=enable_thinking,
            **self.special_tokens,
        )

    def encode(self, prompt: str, enable_thinking: bool = True) -> list[int]:
        """Token ids of the templated prompt, at most MAX_TOKENS (a warning says when it was cut)."""
        ids = self.tokenizer.encode(self.render(prompt, enable_thinking)).ids
        if len(ids) > MAX_TOKENS:
            warnings.warn(
                f"prompt is {len(ids)} tokens with its template; only the first {MAX_TOKENS} are used",
                PromptTruncatedWarning,
                stacklevel=2,
            )
            ids = ids[:MAX_TOKENS]
        return ids
