"""Boxes drawn on the image, labels in any script, exports and zoom-in crops."""

from __future__ import annotations

import csv
import io
import json

from PIL import Image, ImageDraw, ImageFont

from vlassist.answers.annotate import PALETTE, boxes_coco, boxes_csv, boxes_json, crop_box, draw_boxes, font_path
from vlassist.answers.parsing import Box

BOXES = [Box("温度计", 40, 60, 200, 180), Box("valve", 300, 20, 380, 90), Box("knob", 250, 250, 250, 250)]


def test_box_outline_drawn_in_place():
    """Each box's outline lands on its original-pixel edges, in its palette colour; the inside is untouched."""
    image = Image.new("RGB", (517, 333), (255, 255, 255))
    out = draw_boxes(image, BOXES)
    assert out.size == image.size and image.getpixel((40, 120)) == (255, 255, 255)
    assert out.getpixel((40, 120)) == PALETTE[0] and out.getpixel((199, 120)) == PALETTE[0]
    assert out.getpixel((120, 120)) == (255, 255, 255)
    assert out.getpixel((340, 89)) == PALETTE[1]


def test_cjk_font_is_found_and_has_glyphs():
    """The label font draws distinct Chinese characters (not the same missing-glyph box)."""
    path = font_path()
    assert path is not None
    font = ImageFont.truetype(path, 32)

    def render(text):
        img = Image.new("L", (80, 40), 0)
        ImageDraw.Draw(img).text((0, 0), text, fill=255, font=font)
        return img.tobytes()

    assert render("温") != render("度") and any(render("温"))


def test_csv_and_json_exports():
    """CSV has one row per box with width and height; JSON keeps labels and the image size."""
    rows = list(csv.DictReader(io.StringIO(boxes_csv(BOXES))))
    assert [r["label"] for r in rows] == ["温度计", "valve", "knob"] and rows[0]["width"] == "160"
    data = json.loads(boxes_json(BOXES, (517, 333)))
    assert data["image"] == {"width": 517, "height": 333} and data["boxes"][2]["point"] is True


def test_coco_export():
    """COCO bbox is [x, y, width, height]; categories come from the distinct labels."""
    coco = json.loads(boxes_coco(BOXES + [Box("valve", 0, 0, 10, 10)], (517, 333), "panel.png"))
    assert coco["images"][0] == {"id": 1, "file_name": "panel.png", "width": 517, "height": 333}
    assert coco["annotations"][0]["bbox"] == [40, 60, 160, 120]
    assert [c["name"] for c in coco["categories"]] == ["温度计", "valve", "knob"]
    assert coco["annotations"][3]["category_id"] == coco["annotations"][1]["category_id"]


def test_crop_is_full_resolution_region():
    """The zoom-in crop comes from the original pixels around the box, with a margin, inside the image."""
    image = Image.new("RGB", (4000, 3000), (0, 0, 0))
    image.paste((255, 0, 0), (1000, 1000, 1200, 1100))
    crop = crop_box(image, Box("x", 1000, 1000, 1200, 1100))
    assert crop.size == (240, 120)
    assert crop.getpixel((120, 60)) == (255, 0, 0) and crop.getpixel((5, 5)) == (0, 0, 0)
    assert crop_box(image, Box("edge", 3990, 2990, 4000, 3000)).size == (21, 21)
