"""What `run`'s flags ask for, and the /api/generate body they make: one module with no heavy imports,
shared by the command and by its early request (`cli.early_run`), so that both build the same body."""

from dataclasses import dataclass, field

from ollama_img.engine import raw_images
from ollama_img.options import COUNT, KEEP_ALIVE


@dataclass
class RunOptions:
    model: str
    fields: dict[str, object] = field(default_factory=dict)  # what the flags set, by API field
    output: str | None = None
    no_open: bool = False
    json: bool = False

    @property
    def count(self) -> int:
        return self.fields.get(COUNT.field) or 1

    def request(self, prompt: str | None) -> dict:
        """The /api/generate body; no prompt asks the engine to load the model only. Images come back
        as bytes after the final line (`engine.raw_images`), not base64 inside it."""
        body = {"model": self.model}
        if prompt is not None:
            body["prompt"] = prompt
            body[raw_images.FIELD] = True
            body.update(
                (key, value)
                for key, value in self.fields.items()
                if value is not None and key != KEEP_ALIVE.field and not (key == COUNT.field and value == 1)
            )
        if self.fields.get(KEEP_ALIVE.field) is not None:
            body[KEEP_ALIVE.field] = self.fields[KEEP_ALIVE.field]
        return body
