"""The one registry of Qwen-VL family facts, and the modules that ask it."""

import pytest

from vlassist import families
from vlassist.answers.parsing import parse_boxes
from vlassist.answers.prompts import grounding_prompt
from vlassist.families import ABSOLUTE, BOX_JSON, BOX_TOKENS, FAMILIES, RELATIVE, UnknownFamilyError, family


def test_each_family_states_its_facts():
    """Factor, box coordinates and box format per generation."""
    assert {k: (f.factor, f.coordinates, f.box_format) for k, f in FAMILIES.items()} == {
        "qwen2_vl": (28, RELATIVE, BOX_TOKENS),
        "qwen2_5_vl": (28, ABSOLUTE, BOX_JSON),
        "qwen3_vl": (32, RELATIVE, BOX_JSON),
    }
    assert family("qwen3_vl").patch_size * family("qwen3_vl").spatial_merge == 32


def test_unknown_family_is_a_clear_error():
    """An unsupported model_type names itself and the supported ones."""
    with pytest.raises(UnknownFamilyError, match=r"'llava'.*qwen2_vl, qwen2_5_vl, qwen3_vl"):
        family("llava")
    with pytest.raises(ValueError, match="unknown model family"):
        parse_boxes("[]", "llava", (10, 10), (10, 10))


def test_registry_imports_neither_torch_nor_transformers():
    """families.py is safe to import from the UI without loading the model stack."""
    source = open(families.__file__, encoding="utf-8").read()
    assert "import torch" not in source and "import transformers" not in source and "from transformers" not in source


def test_processor_names_resolve_in_transformers():
    """Each named processor class exists in the installed transformers."""
    import transformers

    for f in FAMILIES.values():
        assert getattr(transformers, f.processor).__name__ == f.processor


def test_prompts_and_parsing_follow_the_registry():
    """The grounding prompt and the box mapping come from the family's entry."""
    for name, f in FAMILIES.items():
        assert grounding_prompt(name, "cat") == f.grounding.format(target="cat")
    assert parse_boxes('[{"bbox_2d": [0, 0, 500, 500]}]', "qwen3_vl", (28, 28), (200, 100))[0][1:] == (0, 0, 100, 50)
    assert parse_boxes('[{"bbox_2d": [0, 0, 14, 14]}]', "qwen2_5_vl", (28, 28), (200, 100))[0][1:] == (0, 0, 100, 50)


def test_chat_view_offers_boxes_for_every_family():
    """The UI's box-capable set is every registered family."""
    from vlassist.ui.chat import BOX_FAMILIES

    assert BOX_FAMILIES == set(FAMILIES)
