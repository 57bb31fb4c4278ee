"""The HTTP API's request and response bodies: the OpenAI chat-completions subset vlassist serves, as pydantic."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Unknown request fields (n, user, tools…) are ignored rather than refused, as OpenAI-compatible servers do.
_LENIENT = ConfigDict(extra="ignore")


class ImageURL(BaseModel):
    """An image part's address: only `data:` URLs are accepted; `detail` picks the visual-token budget."""

    model_config = _LENIENT
    url: str
    detail: Literal["low", "high", "auto"] = "auto"


class ContentPart(BaseModel):
    """One part of a message: text, or an image."""

    model_config = _LENIENT
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class Message(BaseModel):
    """One chat message; `developer` is treated as `system`."""

    model_config = _LENIENT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class JsonSchemaFormat(BaseModel):
    """`response_format.json_schema`: the schema the answer must satisfy."""

    model_config = _LENIENT
    name: str = "answer"
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`text`, `json_object` (any JSON object) or `json_schema` (constrained to a schema)."""

    model_config = _LENIENT
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(BaseModel):
    """`stream_options.include_usage`: one last chunk carrying usage."""

    model_config = _LENIENT
    include_usage: bool = False


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions`; `min_tokens` is an extension (vLLM accepts it too) that forces length."""

    model_config = _LENIENT
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    min_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    response_format: ResponseFormat | None = None
    n: int = Field(default=1, ge=1, le=16)  # choices from one prefill, decoded side by side


class Usage(BaseModel):
    """Tokens one answer cost."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The answer of a non-streamed completion."""

    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    """One of the `n` choices (one prefill, each decoded as its own row)."""

    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class Extension(BaseModel):
    """`vlassist` on a response: the answer's stats and, for grounding answers, boxes in original-image pixels."""

    stats: dict[str, Any]
    boxes: list[dict[str, Any]] | None = None


class ChatCompletion(BaseModel):
    """The body of a non-streamed completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    vlassist: Extension


class Delta(BaseModel):
    """New text (and the role, on the first chunk) of a streamed completion."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """One choice's part of a streamed chunk (`index` says which of the `n`)."""

    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed completion; the last one with a finish_reason carries `vlassist`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    vlassist: Extension | None = None


class ModelCard(BaseModel):
    """One entry of `GET /v1/models`."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vlassist"


class ModelList(BaseModel):
    """`GET /v1/models`: the one loaded model."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    """What went wrong, OpenAI-shaped."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error response's body."""

    error: ErrorDetail
