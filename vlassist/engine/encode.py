"""Prompt encoding: the chat template, the images as pixel rows (the last few kept), and the token expansion."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from cachetools import LRUCache
from transformers import BatchFeature

from vlassist.conversation import GenerationOptions, Turn
from vlassist.engine import pixels as pixel_prep
from vlassist.engine.template import PromptRenderer, check_placeholders
from vlassist.errors import VlassistError
from vlassist.images import LoadedImage, Sizing, resize_for_model

PIXEL_MEMO_IMAGES = 4  # processed images kept for follow-ups (~50 MB each at 1920x1080)


def conversation_images(turns: Sequence[Turn]) -> list[LoadedImage]:
    """Every image of the conversation, in prompt order."""
    return [image for turn in turns if turn.role == "user" for image in turn.images]


def check_turns(turns: Sequence[Turn]) -> None:
    """Raise VlassistError unless the conversation ends with a user turn that asks or shows something (or with
    a tool's result, which the model answers next)."""
    if not turns or turns[-1].role not in ("user", "tool"):
        raise VlassistError("a conversation must end with a user turn")
    if turns[-1].role == "user" and not turns[-1].text.strip() and not turns[-1].images:
        raise VlassistError("ask a question or attach an image")


def prompt_tools(options: GenerationOptions) -> list | None:
    """The tool definitions the template shows the model: none when `tool_choice` is "none"."""
    if not options.tools or options.tool_choice == "none":
        return None
    return json.loads(options.tools)


class PixelMemo:
    """Images as the vision tower takes them, on the device; the last few are kept.

    A follow-up question about the same picture then skips resizing and normalising it again.
    """

    def __init__(self, image_processor, device, min_pixels: int, images: int = PIXEL_MEMO_IMAGES):
        self.image_processor, self.device, self.min_pixels = image_processor, device, min_pixels
        self._kept = LRUCache(maxsize=images)  # (sha256, input size) -> (pixel rows, grid)

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, image: LoadedImage, sizing: Sizing) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's pixel rows (patches, C*T*P*P) and grid (1, 3) at its planned size, on the device."""
        key = (image.sha256, sizing.input_size)
        found = self._kept.get(key)
        if found is None:
            found = self._kept[key] = self._process(image, sizing)
        return found

    def _process(self, image: LoadedImage, sizing: Sizing) -> tuple[torch.Tensor, torch.Tensor]:
        resized = resize_for_model(image.image, sizing)
        if pixel_prep.supports(self.image_processor, resized.size):  # normalise + patchify on the device
            return pixel_prep.patchify(resized, self.image_processor, self.device)
        area = sizing.input_size[0] * sizing.input_size[1]
        # The image arrives at its planned size; this range makes the processor keep it exactly.
        out = self.image_processor(images=[resized], return_tensors="pt",
                                   size={"shortest_edge": min(self.min_pixels, area), "longest_edge": area})
        return out["pixel_values"].to(self.device), out["image_grid_thw"].to(self.device)


def encode_prompt(renderer: PromptRenderer, memo: PixelMemo, turns: Sequence[Turn], sizings: Sequence[Sizing],
                  image_token_id: int, merge_size: int, device, tools: list | None = None):
    """The model inputs for `turns` whose images were planned as `sizings`, on the device.

    input_ids and mm_token_type_ids (1, L); with images also pixel_values (patches, C*T*P*P) and
    image_grid_thw (images, 3): what the processor gives, without its host-side image work.
    """
    ids = renderer.token_ids(turns, tools)
    check_placeholders(ids, image_token_id, len(sizings))
    pixel_rows, grids = [], []
    for image, sizing in zip(conversation_images(turns), sizings):
        rows, grid = memo.get(image, sizing)
        pixel_rows.append(rows)
        grids.append(grid)
    # The processor's own expansion: each placeholder becomes one token per merged patch.
    counts = iter([int(g.prod() // merge_size**2) for g in grids])
    expanded = [t for i in ids for t in ([i] * next(counts) if i == image_token_id else [i])]
    input_ids = torch.tensor([expanded], dtype=torch.long, device=device)
    inputs = BatchFeature({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)})
    inputs["mm_token_type_ids"] = (input_ids == image_token_id).long()
    if pixel_rows:
        inputs["pixel_values"] = torch.cat(pixel_rows)  # (patches, C*T*P*P), already on the device
        inputs["image_grid_thw"] = torch.cat(grids)  # (images, 3)
    return inputs
