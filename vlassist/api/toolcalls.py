"""Tool calls over the API: a request's tools and tool_choice as options, the answer's <tool_call> blocks as calls.

Qwen models write each call as `<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>` (the format their
chat templates describe). The answer's text is split into content and calls as it streams; a block that is not
a valid call stays text, exactly as the model wrote it.
"""

from __future__ import annotations

import json
import uuid

import json_repair

from .convert import ApiError
from .models import ChatRequest, FunctionCall, ToolCall

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


def tool_options(body: ChatRequest) -> dict:
    """GenerationOptions fields for the request's tools: tools (JSON text), tool_choice, forced_tool, parallel."""
    choice = body.tool_choice
    if not body.tools:
        if choice is not None and choice != "none" and choice != "auto":
            raise ApiError(400, "tool_choice needs tools: send the functions the model may call in `tools`",
                           param="tool_choice")
        return {}
    names = [tool.function.name for tool in body.tools]
    if len(set(names)) != len(names):
        raise ApiError(400, "tools: two functions have the same name", param="tools")
    for i, tool in enumerate(body.tools):
        if tool.function.parameters is not None and tool.function.parameters.get("type", "object") != "object":
            raise ApiError(400, f"tools[{i}].function.parameters must be a JSON Schema of type object",
                           param=f"tools[{i}].function.parameters")
    forced = None
    if choice is not None and not isinstance(choice, str):
        forced = choice.function.name
        if forced not in names:
            raise ApiError(400, f"tool_choice names {forced!r}, which is not among the tools", param="tool_choice")
    mode = choice if isinstance(choice, str) else "auto"
    if (mode == "required" or forced) and body.response_format is not None and body.response_format.type != "text":
        raise ApiError(400, "a required or named tool_choice and a JSON response_format cannot be combined: the "
                            "answer is either tool calls or a JSON document", param="tool_choice")
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools]
    return {"tools": json.dumps(tools, ensure_ascii=False), "tool_choice": mode, "forced_tool": forced,
            "parallel_tool_calls": body.parallel_tool_calls is not False}


def calls_expected(body: ChatRequest) -> bool:
    """True if the answer's <tool_call> blocks are to be returned as tool calls."""
    return bool(body.tools) and body.tool_choice != "none"


def _call(body: str, repair: bool = False) -> ToolCall | None:
    try:
        data = json.loads(body, strict=False)  # a raw control character inside a string is still that string
    except ValueError:
        if not repair:
            return None
        data = json_repair.loads(body)  # a call the token limit cut off: its arguments closed as far as written
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=FunctionCall(name=data["name"], arguments=arguments))


class ToolCallSplitter:
    """Splits streamed answer text into content and complete tool calls (text passes through when disabled)."""

    def __init__(self, enabled: bool, parallel: bool = True):
        self.enabled, self.parallel = enabled, parallel
        self.pending = ""  # text that may be the start of a call, or a call not yet closed
        self.held = ""  # whitespace not sent yet: between and after calls it is not content
        self.in_call = False
        self.calls: list[ToolCall] = []
        self.content = ""

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Content that is safe to send now, and the calls completed by `text`."""
        if not self.enabled:
            self.content += text
            return text, []
        self.pending += text
        out, calls = "", []
        while True:
            if not self.in_call:
                start = self.pending.find(OPEN)
                if start < 0:
                    keep = max((k for k in range(1, len(OPEN)) if self.pending.endswith(OPEN[:k])), default=0)
                    out += self.pending[:len(self.pending) - keep]
                    self.pending = self.pending[len(self.pending) - keep:]
                    break
                out += self.pending[:start]
                self.pending, self.in_call = self.pending[start + len(OPEN):], True
            else:
                end = self.pending.find(CLOSE)
                if end < 0:
                    break
                body, self.pending, self.in_call = self.pending[:end], self.pending[end + len(CLOSE):], False
                call = _call(body)
                if call is None:  # not a call after all: the model's text as it wrote it
                    out += OPEN + body + CLOSE
                elif self.parallel or not (self.calls or calls):
                    calls.append(call)
        self.calls += calls
        return self._content(out), calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        """What is left once the answer has ended: held text, and a call the token limit cut off (repaired)."""
        if not self.enabled:
            return "", []
        out, calls = "", []
        if self.in_call:
            call = _call(self.pending, repair=True)
            if call is not None and (self.parallel or not self.calls):
                calls.append(call)
            elif call is None:
                out = OPEN + self.pending
        else:
            out = self.pending
        self.pending, self.in_call = "", False
        self.calls += calls
        content = self._content(out)
        if not self.calls and self.held:  # an answer without calls keeps its trailing whitespace
            content, self.content, self.held = content + self.held, self.content + self.held, ""
        return content, calls

    def _content(self, out: str) -> str:
        # Whitespace is sent only once text follows it: the newlines around calls are not content.
        text = self.held + out
        if not text.strip():
            self.held = text
            return ""
        stripped = text.rstrip()
        self.held = text[len(stripped):]
        self.content += stripped
        return stripped
