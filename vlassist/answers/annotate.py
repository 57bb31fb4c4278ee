"""Grounding boxes drawn on the image with readable labels in any script, exports, and zoom-in crops."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from vlassist.answers.parsing import Box

# Fonts with CJK coverage first (labels are often Chinese), then common Latin fallbacks.
FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (128, 128, 0), (0, 128, 128), (170, 110, 40))


@lru_cache(maxsize=1)
def font_path() -> str | None:
    """The first installed font that can show CJK labels (else a Latin one; None: Pillow's built-in)."""
    return next((p for p in FONT_CANDIDATES if Path(p).is_file()), None)


def _font(size: int) -> ImageFont.ImageFont:
    path = font_path()
    if path:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    return ImageFont.load_default(size=size)


def draw_boxes(image: Image.Image, boxes: Sequence[Box]) -> Image.Image:
    """A copy of `image` with each box outlined, numbered and labelled; points drawn as rings."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    scale = max(out.size) / 1000
    width = max(2, round(3 * scale))
    font = _font(max(12, round(18 * scale)))
    for i, box in enumerate(boxes):
        color = PALETTE[i % len(PALETTE)]
        if box.is_point:
            r = max(4, round(8 * scale))
            draw.ellipse([box.x1 - r, box.y1 - r, box.x1 + r, box.y1 + r], outline=color, width=width)
        else:
            draw.rectangle([box.x1, box.y1, max(box.x1, box.x2 - 1), max(box.y1, box.y2 - 1)], outline=color,
                           width=width)
        text = f"{i + 1} {box.label}".strip()
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        # Label above the box when there is room, else just inside it; kept within the image.
        x = min(max(0, box.x1), max(0, out.width - tw - 6))
        y = box.y1 - th - 6 if box.y1 - th - 6 >= 0 else min(box.y1, out.height - th - 6)
        draw.rectangle([x, y, x + tw + 6, y + th + 6], fill=color)
        draw.text((x + 3 - left, y + 3 - top), text, fill=(255, 255, 255), font=font)
    return out


def boxes_json(boxes: Sequence[Box], image_size: tuple[int, int]) -> str:
    """Boxes as JSON in original-image pixels."""
    return json.dumps({"image": {"width": image_size[0], "height": image_size[1]},
                       "boxes": [{"label": b.label, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2,
                                  "point": b.is_point} for b in boxes]}, ensure_ascii=False, indent=2)


def boxes_csv(boxes: Sequence[Box]) -> str:
    """Boxes as CSV: index, label, x1, y1, x2, y2, width, height."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "label", "x1", "y1", "x2", "y2", "width", "height"])
    for i, b in enumerate(boxes, 1):
        writer.writerow([i, b.label, b.x1, b.y1, b.x2, b.y2, round(b.x2 - b.x1, 2), round(b.y2 - b.y1, 2)])
    return buf.getvalue()


def boxes_coco(boxes: Sequence[Box], image_size: tuple[int, int], file_name: str = "image.png") -> str:
    """Boxes as a COCO detection file: one image, categories from the labels, bbox as [x, y, w, h]."""
    names = list(dict.fromkeys(b.label or "object" for b in boxes))
    categories = [{"id": i, "name": n} for i, n in enumerate(names, 1)]
    ids = {n: i for i, n in enumerate(names, 1)}
    annotations = []
    for i, b in enumerate(boxes, 1):
        w, h = round(b.x2 - b.x1, 2), round(b.y2 - b.y1, 2)
        ann = {"id": i, "image_id": 1, "category_id": ids[b.label or "object"], "bbox": [b.x1, b.y1, w, h],
               "area": round(w * h, 2), "iscrowd": 0}
        if b.is_point:
            ann["keypoints"] = [b.x1, b.y1, 2]
            ann["num_keypoints"] = 1
        annotations.append(ann)
    return json.dumps({"images": [{"id": 1, "file_name": file_name, "width": image_size[0],
                                   "height": image_size[1]}],
                       "annotations": annotations, "categories": categories}, ensure_ascii=False, indent=2)


def crop_box(image: Image.Image, box: Box, margin: float = 0.1, min_side: int = 32) -> Image.Image:
    """The region of a box in the full-resolution original, with a margin, at least `min_side` px a side."""
    bw, bh = box.x2 - box.x1, box.y2 - box.y1
    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
    half_w = max(bw * (1 + 2 * margin), min_side) / 2
    half_h = max(bh * (1 + 2 * margin), min_side) / 2
    left, top = max(0, round(cx - half_w)), max(0, round(cy - half_h))
    right, bottom = min(image.width, round(cx + half_w)), min(image.height, round(cy + half_h))
    return image.crop((left, top, max(right, left + 1), max(bottom, top + 1)))
