"""A LoRA adapter through the front ends: `--adapter`, the API's own model id, and stored answers naming it."""

from __future__ import annotations

import pytest
from api_support import start_serve, stop_serve
from conftest import _make_tiny_model, image_bytes

from vlassist.images import load_image


@pytest.fixture(scope="module")
def adapter(tiny_qwen25, tmp_path_factory):
    """A LoRA adapter folder named `invoices` for the tiny Qwen2.5-VL checkpoint."""
    return _make_tiny_model().build_adapter(tiny_qwen25, tmp_path_factory.mktemp("lora") / "invoices")


def test_info_with_adapter_names_it_and_how_it_was_applied(tiny_qwen25, adapter, monkeypatch, capsys):
    """`vlassist info --adapter DIR` loads the adapter and reports its folder and the layers it merged."""
    from vlassist.__main__ import main

    monkeypatch.setenv("VLASSIST_DEVICE", "cpu")
    monkeypatch.setenv("VLASSIST_COMPILE", "off")
    assert main(["info", "--model", str(tiny_qwen25), "--adapter", str(adapter)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("adapter:"))
    assert str(adapter) in line and "merged" in line


def test_ask_with_a_missing_adapter_is_one_line_error(tiny_qwen25, tmp_path, png_file, monkeypatch, capsys):
    """`vlassist ask --adapter` on a folder without adapter_config.json exits 2 with one line naming the file."""
    from vlassist.__main__ import main

    monkeypatch.setenv("VLASSIST_DEVICE", "cpu")
    code = main(["ask", str(png_file), "-p", "Read it", "--model", str(tiny_qwen25), "--adapter", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert str(tmp_path / "adapter_config.json") in lines[0] and "missing" in lines[0]


@pytest.mark.enable_socket
def test_api_lists_and_answers_as_base_plus_adapter(tiny_qwen25, adapter, tmp_path):
    """`serve` with an adapter lists `<base>+<adapter>`, answers as it, and refuses the bare base's id."""
    import openai

    proc, url = start_serve(tiny_qwen25, tmp_path / "serve.log", VLASSIST_ADAPTER=str(adapter),
                            VLASSIST_COMPILE="off")
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        ids = [model.id for model in client.models.list()]
        assert ids == [f"{tiny_qwen25.name}+invoices"]
        reply = client.chat.completions.create(model=ids[0], max_tokens=4,
                                               messages=[{"role": "user", "content": "Hello"}])
        assert reply.model == ids[0] and reply.choices[0].message.content is not None
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(model=tiny_qwen25.name, max_tokens=4,
                                           messages=[{"role": "user", "content": "Hello"}])
        assert "not served here" in str(exc.value) and f"{tiny_qwen25.name}+invoices" in str(exc.value)
    finally:
        stop_serve(proc)


def test_stored_answer_records_base_format_and_adapter(tiny_qwen25, adapter, tmp_path):
    """An answer asked through the service stores the base folder, the weight format and the adapter folder."""
    from vlassist.config import load_settings
    from vlassist.engine import load_engine
    from vlassist.service import conversations
    from vlassist.service.answering import AnswerService
    from vlassist.service.models import answer_model
    from vlassist.store.history import History, NewImage

    engine = load_engine(load_settings({"VLASSIST_MODEL_DIR": str(tiny_qwen25), "VLASSIST_DEVICE": "cpu",
                                        "VLASSIST_ADAPTER": str(adapter)}))
    service = AnswerService(engine)
    history = History.open(tmp_path / "data")
    store = history.for_owner("local")
    data = image_bytes((64, 48))
    job = conversations.ask(service, store, None, "Read it", [NewImage(data, load_image(data, "a.png"), "a.png")],
                            **answer_model(engine))
    job.wait(120)
    [summary] = store.list_conversations()
    answer = store.get_conversation(summary.id).messages[-1]
    assert (answer.model, answer.weights_format, answer.adapter) == (str(tiny_qwen25), "fp32", str(adapter))
    service.close()
    history.close()
    engine.close()


def test_answers_stored_before_the_upgrade_keep_format_and_adapter_unknown(tmp_path):
    """An old database gains the columns on open; its answers keep their model and read None for the new ones."""
    from test_history_upgrade import version_1_database

    from vlassist.store.history import History

    history = History.open(version_1_database(tmp_path / "old"))
    stores = [history.for_owner(owner) for owner in ("ann", "bob")]
    answers = [m for store in stores for c in store.list_conversations()
               for m in store.get_conversation(c.id).messages if m.role == "assistant"]
    assert answers and all(m.weights_format is None and m.adapter is None for m in answers)
    history.close()


def test_batch_rows_name_the_model_with_its_adapter(tiny_qwen25, adapter):
    """`vlassist batch --adapter` keys and labels its rows `<base>+<adapter>`, so a run without it is other work."""
    from vlassist.batch.cli import _model
    from vlassist.config import load_settings

    plain = load_settings({"VLASSIST_MODEL_DIR": str(tiny_qwen25), "VLASSIST_DEVICE": "cpu"})
    assert _model(plain)[2] == tiny_qwen25.name
    assert _model(plain.with_(adapter_dir=adapter))[2] == f"{tiny_qwen25.name}+invoices"


def test_adapter_settings_are_read_and_checked():
    """VLASSIST_ADAPTER becomes a path, VLASSIST_ADAPTER_MODE defaults to auto and refuses other words by name."""
    from vlassist.config import load_settings
    from vlassist.errors import ConfigError

    settings = load_settings({"VLASSIST_ADAPTER": "~/lora"})
    assert settings.adapter_dir is not None and "~" not in str(settings.adapter_dir) and settings.adapter_mode == "auto"
    assert load_settings({}).adapter_dir is None
    with pytest.raises(ConfigError, match="VLASSIST_ADAPTER_MODE='fuse' is not valid"):
        load_settings({"VLASSIST_ADAPTER_MODE": "fuse"})
