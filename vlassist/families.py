"""Everything vlassist knows about each supported Qwen-VL generation, in one place (no torch, no transformers)."""

from __future__ import annotations

from dataclasses import dataclass

# Box coordinate systems: "absolute" pixels of the processor-resized model input, or "relative" on a 0–1000 grid.
ABSOLUTE = "absolute"
RELATIVE = "relative"
RELATIVE_SCALE = 1000.0

# Box answer formats the families were trained to emit.
BOX_TOKENS = "box_tokens"  # <|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>
BOX_JSON = "json_bbox_2d"  # [{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]


@dataclass(frozen=True)
class Family:
    """What differs between the Qwen-VL generations that vlassist supports."""

    model_type: str  # config.json's model_type
    processor: str  # transformers processor class name, resolved with getattr(transformers, name) by the loader
    patch_size: int  # vision patch side in pixels
    spatial_merge: int  # patches merged per side into one visual token
    coordinates: str  # ABSOLUTE or RELATIVE
    box_format: str  # BOX_TOKENS or BOX_JSON
    grounding: str  # the "Find objects" prompt in the phrasing this family was trained on; {target} is filled in

    @property
    def factor(self) -> int:
        """Pixels per visual token side: patch size × spatial merge."""
        return self.patch_size * self.spatial_merge

    @property
    def boxes(self) -> str:
        """The box coordinate system (ABSOLUTE or RELATIVE); kept under its old name."""
        return self.coordinates


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("qwen2_vl", "Qwen2VLProcessor", 14, 2, RELATIVE, BOX_TOKENS,
               "Find every {target} in this image and give the bounding box of each."),
        Family("qwen2_5_vl", "Qwen2_5_VLProcessor", 14, 2, ABSOLUTE, BOX_JSON,
               "Locate every {target} in the image, output bbox coordinates in JSON format: a list where each "
               "item has \"bbox_2d\": [x1, y1, x2, y2] and \"label\"."),
        Family("qwen3_vl", "Qwen3VLProcessor", 16, 2, RELATIVE, BOX_JSON,
               "Locate every instance that belongs to the following categories: \"{target}\". Report bbox "
               "coordinates in JSON format: a list where each item has \"bbox_2d\": [x1, y1, x2, y2] and "
               "\"label\"."),
    )
}


class UnknownFamilyError(ValueError):
    """A model_type vlassist does not support."""


def family(model_type: str) -> Family:
    """The Family of `model_type`, or UnknownFamilyError naming the supported ones."""
    try:
        return FAMILIES[model_type]
    except (KeyError, TypeError):
        raise UnknownFamilyError(
            f"unknown model family {model_type!r}; vlassist supports {', '.join(FAMILIES)}"
        ) from None


def families_with(coordinates: str) -> frozenset[str]:
    """The model_types whose boxes use coordinate system `coordinates` (ABSOLUTE or RELATIVE)."""
    return frozenset(name for name, f in FAMILIES.items() if f.coordinates == coordinates)
