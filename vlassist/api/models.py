"""The HTTP API's request and response bodies: the OpenAI chat-completions subset vlassist serves, as pydantic."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Unknown fields inside messages and parts are ignored; the request's own unknown fields are refused (params.py).
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


class FunctionCall(BaseModel):
    """A call's function: its name and its arguments as JSON text."""

    model_config = _LENIENT
    name: str
    arguments: str = "{}"


class ToolCall(BaseModel):
    """One function call an assistant message made (in a request's history, or in an answer)."""

    model_config = _LENIENT
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    """One chat message; `developer` is treated as `system`; `tool` carries one call's result."""

    model_config = _LENIENT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(BaseModel):
    """A function the model may call: name, description and a JSON Schema of its arguments."""

    model_config = _LENIENT
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    """One entry of `tools`: only functions exist."""

    model_config = _LENIENT
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    """The function a named `tool_choice` forces."""

    model_config = _LENIENT
    name: str


class NamedToolChoice(BaseModel):
    """`tool_choice: {"type": "function", "function": {"name": …}}`: the answer calls this function."""

    model_config = _LENIENT
    type: Literal["function"] = "function"
    function: NamedFunction


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


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs`: the answer held to a JSON Schema, a regular expression or one of some strings."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    json_object: bool | None = None


class ChatRequest(BaseModel):
    """`POST /v1/chat/completions`; `min_tokens` is an extension (vLLM accepts it too) that forces length.

    Fields not declared here are kept (extra="allow") so that vlassist/api/params.py can refuse them by name.
    """

    model_config = ConfigDict(extra="allow")
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
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None


class Usage(BaseModel):
    """Tokens one answer cost."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The answer of a non-streamed completion."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None  # None when the answer is only tool calls
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    """One likely token at a position of the answer."""

    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    """One answer token's log-probability, with the likeliest tokens at its position."""

    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    """`choices[].logprobs` when the request asked for them."""

    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class Choice(BaseModel):
    """One of the `n` choices (one prefill, each decoded as its own row)."""

    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChoiceLogprobs | None = None


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


class ToolCallDelta(BaseModel):
    """One tool call of a streamed answer, sent whole once its block is complete."""

    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Delta(BaseModel):
    """New text (and the role, on the first chunk) of a streamed completion; or its tool calls."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    """One choice's part of a streamed chunk (`index` says which of the `n`)."""

    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: ChoiceLogprobs | None = None


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
    """One entry of `GET /v1/models`: with the model family (box coordinates) and its context length (vLLM's name)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vlassist"
    family: str | None = None
    max_model_len: int | None = None


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


class TokenizeRequest(BaseModel):
    """`POST /tokenize` (vLLM's shape): a text `prompt`, or chat `messages` rendered as the model sees them."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    """The prompt's token ids (images as their visual tokens), how many, and the model's context length."""

    count: int
    max_model_len: int | None = None
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    """`POST /detokenize` (vLLM's shape): token ids back to text."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    """The text of the given tokens."""

    prompt: str
