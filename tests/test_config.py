"""Settings come from VLASSIST_* variables; bad values name the variable."""

import pytest

from vlassist.config import load_settings
from vlassist.errors import ConfigError


def test_defaults_when_nothing_is_set():
    """With no variables, the documented defaults apply."""
    s = load_settings({})
    assert str(s.model_dir) == "models/Qwen2.5-VL-7B-Instruct"
    assert str(s.data_dir) == "data"
    assert (s.device, s.attn, s.max_image_tokens, s.gpu_memory_gb) == ("auto", "auto", 1280, None)


def test_values_are_read_and_typed():
    """Every variable is parsed into its field with the right type."""
    s = load_settings({"VLASSIST_MODEL_DIR": "/m", "VLASSIST_DATA_DIR": "/d", "VLASSIST_DEVICE": "CPU",
                       "VLASSIST_ATTN": "sdpa", "VLASSIST_MAX_IMAGE_TOKENS": "512", "VLASSIST_GPU_MEMORY_GB": "22.5"})
    assert (str(s.model_dir), str(s.data_dir), s.device, s.attn) == ("/m", "/d", "cpu", "sdpa")
    assert (s.max_image_tokens, s.gpu_memory_gb) == (512, 22.5)


@pytest.mark.parametrize("name,value", [
    ("VLASSIST_DEVICE", "gpu"), ("VLASSIST_ATTN", "flash"), ("VLASSIST_MAX_IMAGE_TOKENS", "lots"),
    ("VLASSIST_MAX_IMAGE_TOKENS", "0"), ("VLASSIST_GPU_MEMORY_GB", "-3"), ("VLASSIST_USER_HEADER", "X User"),
])
def test_invalid_value_names_the_variable(name, value):
    """An unusable value raises ConfigError whose message names the variable."""
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})
