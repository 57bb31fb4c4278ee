"""scripts/fetch_model.py: fails fast offline; verifies completeness and writes a checkable manifest."""

import importlib.util
import shutil

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def fetch():
    """The fetch_model script as a module."""
    spec = importlib.util.spec_from_file_location("fetch_model", ROOT / "scripts" / "fetch_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_internet_it_stops_at_once_with_a_clear_message(fetch, tmp_path):
    """With network access blocked, the script exits with a message about having no internet."""
    with pytest.raises(SystemExit) as stopped:
        fetch.main(["Qwen/Qwen2.5-VL-7B-Instruct", "--models-dir", str(tmp_path)])
    assert "no internet" in str(stopped.value) and "models/" in str(stopped.value)
    assert not any(tmp_path.iterdir())


def test_manifest_verifies_an_intact_copy_and_names_a_damaged_file(fetch, tmp_path, tiny_qwen25):
    """The sha256 manifest passes for a faithful copy and names a file changed in transit."""
    copy = tmp_path / "Qwen2.5-VL-7B-Instruct"
    shutil.copytree(tiny_qwen25, copy)
    fetch.write_manifest(copy)
    assert fetch.main(["--models-dir", str(tmp_path), "--verify"]) == 0
    with (copy / "config.json").open("a") as fh:
        fh.write(" ")
    assert fetch.verify(copy) == ["config.json"]
    assert fetch.main(["--models-dir", str(tmp_path), "--verify"]) == 1


def test_known_models_include_the_default_and_qwen3(fetch):
    """The default is Qwen2.5-VL-7B-Instruct and the Qwen3-VL 2B/4B/8B Instruct models are known."""
    assert fetch.KNOWN[0] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert {f"Qwen/Qwen3-VL-{n}B-Instruct" for n in (2, 4, 8)} <= set(fetch.KNOWN)
