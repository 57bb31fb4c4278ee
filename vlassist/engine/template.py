"""Turns → the checkpoint's chat template → token ids, with everything a user wrote encoded as plain text.

The template decides what the model sees (system slot, tool definitions, tool calls and results, image
placeholders where images stand). Only the template may put control tokens into the prompt: every string that
came from a user (question, system prompt, tool result, tool definitions, earlier answers) is escaped before
rendering, so `<|im_end|>` or `<|image_pad|>` typed by someone is tokenized as the characters it is made of.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from vlassist.conversation import Turn
from vlassist.errors import VlassistError

# Characters from the last private-use plane stand in for control-token text inside user strings while the
# template renders; ESCAPE doubled stands for itself, so any user text survives the round trip unchanged.
ESCAPE = "\U0010fffd"
_FIRST_STAND_IN = 0xF0000

# Qwen2.5-VL's template has no tool support; Qwen2.5's own (text) template describes the format the model was
# trained on. This is Qwen2.5-VL's template (images, default system line) with Qwen2.5's tool handling added:
# for messages without tools, tool calls or tool results it renders exactly what the checkpoint's does.
QWEN25_VL_TOOLS_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}"
    "{%- macro render(content) %}{%- if content is string %}{{- content }}{%- else %}"
    "{%- for part in content %}{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{%- set image_count.value = image_count.value + 1 %}{%- if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'text' in part %}{{- part['text'] }}{%- endif %}{%- endfor %}{%- endif %}{%- endmacro %}"
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- render(messages[0]['content']) }}"
    "{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}"
    "{%- elif messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and loop.first and tools %}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- render(message['content']) }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] %}"
    "{{- '<|im_start|>assistant' }}{%- if message['content'] %}{{- '\\n' }}{{- render(message['content']) }}"
    "{%- endif %}"
    "{%- for tool_call in message['tool_calls'] %}{%- if tool_call['function'] is defined %}"
    "{%- set tool_call = tool_call['function'] %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call['name'] }}{{- '\", \"arguments\": ' }}"
    "{%- if tool_call['arguments'] is string %}{{- tool_call['arguments'] }}"
    "{%- else %}{{- tool_call['arguments'] | tojson }}{%- endif %}{{- '}\\n</tool_call>' }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' }}{{- render(message['content']) }}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def handles_tools(template: str | None) -> bool:
    """True if a chat template renders tool definitions, tool calls and tool results itself."""
    return bool(template) and "tools" in template and "tool_calls" in template


def template_for(processor, turns: Sequence[Turn], tools: list | None) -> str | None:
    """The template to render with: the checkpoint's, or the tool-aware Qwen2.5-VL one when tools are in play
    and the checkpoint's template cannot show them (None: the processor's own)."""
    own = processor.chat_template if isinstance(processor.chat_template, str) else None
    uses_tools = bool(tools) or any(t.role == "tool" or t.tool_calls for t in turns)
    if uses_tools and not handles_tools(own):
        return QWEN25_VL_TOOLS_TEMPLATE
    return None


class Escaper:
    """Hides a tokenizer's control-token strings inside user text while the template renders."""

    def __init__(self, tokenizer):
        # Longest first: `<|im_end|>` must not be matched as a shorter token's text that it contains.
        self.tokens = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.content},
                             key=len, reverse=True)
        self.stand_in = {tok: ESCAPE + chr(_FIRST_STAND_IN + i) for i, tok in enumerate(self.tokens)}
        self.by_stand_in = {chr(_FIRST_STAND_IN + i): tok for i, tok in enumerate(self.tokens)}
        alternatives = [re.escape(ESCAPE)] + [re.escape(tok) for tok in self.tokens]
        self._hide = re.compile("|".join(alternatives))
        self._show = re.compile(re.escape(ESCAPE) + "(.)", re.S)
        self.control = re.compile("|".join(re.escape(tok) for tok in self.tokens)) if self.tokens else None

    def hide(self, text: str) -> str:
        """`text` with every control-token string (and the escape character) replaced by its stand-in."""
        return self._hide.sub(lambda m: ESCAPE + ESCAPE if m.group() == ESCAPE else self.stand_in[m.group()], text)

    def show(self, text: str) -> str:
        """The original text of something `hide` produced."""
        return self._show.sub(lambda m: ESCAPE if m.group(1) == ESCAPE else self.by_stand_in.get(m.group(1), ""),
                              text)


def _arguments(text: str) -> Any:
    # The templates write arguments with tojson, as the model wrote them; text that is not JSON goes in as is.
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def chat_messages(turns: Sequence[Turn], hide=lambda s: s) -> list[dict]:
    """The turns as the chat template's messages: system turns merged into one leading system message, parts in
    order with an `{"type": "image"}` where each image stands, tool calls and results in the template's fields."""
    system = [hide(t.text) for t in turns if t.role == "system"]
    messages: list[dict] = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    for turn in turns:
        if turn.role == "system":
            continue
        if turn.role == "tool":
            messages.append({"role": "tool", "content": hide(turn.text), "tool_call_id": turn.tool_call_id})
        elif turn.role == "assistant" and turn.tool_calls:
            calls = [{"type": "function", "id": call.id,
                      "function": {"name": hide(call.name), "arguments": _deep(_arguments(call.arguments), hide)}}
                     for call in turn.tool_calls]
            messages.append({"role": "assistant", "content": hide(turn.text), "tool_calls": calls})
        elif turn.role == "assistant":
            messages.append({"role": "assistant", "content": [{"type": "text", "text": hide(turn.text)}]})
        else:
            content = [{"type": "text", "text": hide(part)} if isinstance(part, str) else {"type": "image"}
                       for part in turn.ordered_parts()]
            messages.append({"role": turn.role, "content": content})
    return messages


def _deep(value: Any, hide) -> Any:
    """`hide` applied to every string (keys too) inside JSON-like data."""
    if isinstance(value, str):
        return hide(value)
    if isinstance(value, dict):
        return {hide(k): _deep(v, hide) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep(v, hide) for v in value]
    return value


class PromptRenderer:
    """Renders turns through the chat template and tokenizes the result, user strings as plain text."""

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.escaper = Escaper(self.tokenizer)
        self.ids = {tok: self.tokenizer.convert_tokens_to_ids(tok) for tok in self.escaper.tokens}
        self._split = re.compile("(" + "|".join(re.escape(tok) for tok in self.escaper.tokens) + ")")
        self._backend = self.tokenizer.backend_tokenizer

    def render(self, turns: Sequence[Turn], tools: list | None = None) -> str:
        """The template's text for `turns` (user strings escaped), ending with the assistant's generation prompt."""
        escaper = self.escaper
        messages = chat_messages(turns, escaper.hide)
        kwargs: dict = {"add_generation_prompt": True, "tokenize": False}
        if tools:
            kwargs["tools"] = _deep(tools, escaper.hide)
        template = template_for(self.processor, turns, tools)
        if template is not None:
            kwargs["chat_template"] = template
        return self.processor.apply_chat_template(messages, **kwargs)

    def token_ids(self, turns: Sequence[Turn], tools: list | None = None) -> list[int]:
        """The prompt's token ids, one image placeholder token per image (not yet expanded)."""
        ids: list[int] = []
        for piece in self._split.split(self.render(turns, tools)):
            if not piece:
                continue
            if piece in self.ids:  # a control token the template wrote
                ids.append(self.ids[piece])
            else:
                ids += self.plain_ids(self.escaper.show(piece))
        return ids

    def plain_ids(self, text: str) -> list[int]:
        """`text` tokenized as characters: control-token strings in it are not matched as control tokens."""
        control = self.escaper.control
        if control is None or not control.search(text):
            return self._backend.encode(text, add_special_tokens=False).ids
        # The tokenizer's pipeline without its added-token matching: normalize, pre-tokenize, then the BPE model.
        backend = self._backend
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        words = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer is not None else [(text, None)]
        return [token.id for word, _ in words for token in backend.model.tokenize(word)]


def check_placeholders(ids: Sequence[int], image_token_id: int, images: int) -> None:
    """Raise unless the template placed exactly one placeholder per image."""
    if sum(1 for i in ids if i == image_token_id) != images:
        raise VlassistError("the chat template placed a different number of images than were given")
