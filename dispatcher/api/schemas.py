"""Request bodies, validated by pydantic; a failure is a 422 that names the field."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TurnId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
SessionId = Annotated[str, Field(min_length=1, max_length=256)]


class Message(BaseModel):
    """A chat message, OpenAI-shaped; extra keys (tool_calls, tool_call_id, name) are kept."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class TurnRequest(BaseModel):
    """``POST /v1/turns``. Unknown keys are refused, so a typo is a 422, not ignored."""

    model_config = ConfigDict(extra="forbid")

    session_id: SessionId
    text: str
    messages: list[Message] = []
    state: dict[str, Any] = {}
    tier: str | None = None
    stream: bool = True
    speculative: bool = False
    metadata: dict[str, Any] = {}
    turn_id: TurnId | None = Field(
        default=None,
        description="the caller's own id for the turn: retrying the request (with "
        "Last-Event-ID) resumes that turn instead of starting another",
    )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's body; keys we do not use are ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    user: str | None = Field(default=None, max_length=256)
    n: int | None = Field(default=None, ge=1, le=1)
    # Dispatcher extensions (``extra_body`` in the openai SDK).
    session_id: SessionId | None = None
    state: dict[str, Any] = {}
    speculative: bool = False

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v
