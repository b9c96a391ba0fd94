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
    """``POST /v1/chat/completions`` body.

    Unknown fields are ignored (clients send their own extras). Fields OpenAI defines but
    omnimodal cannot honour are declared here loosely and refused with a 400 naming them when
    set to anything but their neutral value (see :data:`UNSUPPORTED`); bookkeeping fields
    (``user``, ``metadata``, ``store``, ``service_tier``...) are accepted and ignored.
    """

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
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # OpenAI-defined, unsupported: refused unless neutral.
    logit_bias: Any = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None

    def unsupported(self) -> tuple[str, str] | None:
        """The first OpenAI field set to a value omnimodal cannot honour, with why; else None."""
        for name, (neutral, why) in UNSUPPORTED.items():
            value = getattr(self, name)
            if value is not None and not neutral(value):
                return name, why
        return None


UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "logit_bias": (lambda v: v == {}, "logit_bias is not supported"),
    "frequency_penalty": (lambda v: v == 0, "frequency_penalty is not supported (only 0)"),
    "presence_penalty": (lambda v: v == 0, "presence_penalty is not supported (only 0)"),
    "tools": (lambda v: v == [], "tools (function calling) are not supported"),
    "tool_choice": (lambda v: v == "none", "tool_choice is not supported (only 'none')"),
    "functions": (lambda v: v == [], "functions (function calling) are not supported"),
    "function_call": (lambda v: v == "none", "function_call is not supported (only 'none')"),
    "response_format": (lambda v: v == {"type": "text"}, "response_format is not supported (only {'type': 'text'})"),
    "audio": (lambda v: False, "audio output is not supported"),
    "modalities": (lambda v: v == ["text"], "output modalities other than ['text'] are not supported"),
    "prediction": (lambda v: False, "predicted outputs are not supported"),
    "web_search_options": (lambda v: False, "web search is not supported"),
    "reasoning_effort": (lambda v: False, "reasoning_effort is not supported (not a reasoning model)"),
    "verbosity": (lambda v: False, "verbosity is not supported"),
}


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
