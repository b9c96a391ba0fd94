"""Request and response shapes of the OpenAI-compatible API (pydantic, strict types).

Content parts are open: ``type`` plus whatever keys that part type carries, so a plugin's own
part type (``{"type": "molecule", "smiles": ...}``) passes through to its modality unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ContentPart(BaseModel):
    """One content part: ``text`` or an API part type a modality plugin declares (``image_url``...)."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: str


class ChatMessage(BaseModel):
    """A message: role and content (a string or a list of parts)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def as_record(self) -> dict[str, Any]:
        """The message in omnimodal's record form (``developer`` counts as ``system``)."""
        role = "system" if self.role == "developer" else self.role
        if isinstance(self.content, list):
            content: Any = [p.model_dump() for p in self.content]
        else:
            content = self.content if self.content is not None else ""
        return {"role": role, "content": content}


class StreamOptions(BaseModel):
    """``stream_options``: ask for a final usage chunk."""

    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` body; unknown OpenAI options are accepted and ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
