"""The page's Model section in a real browser: format, size and estimate per checkpoint, greyed when it cannot run;
a LoRA adapter picked and loaded, and the answers stored with it."""

from __future__ import annotations

import os
import time

import pytest
from conftest import _make_tiny_model
from test_browser import ASSISTANT, CHROMIUM, TEXTAREA, serve, stop
from test_browser_live import ask, conversation, set_length
from test_browser_models import PROGRESS, open_model_section
from test_fit import checkpoint_without_weights

pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed"),
]


@pytest.fixture(scope="module")
def fit_server(tiny_qwen25, tmp_path_factory):
    """The app (device auto: the GPU budget applies) on a models folder with the tiny checkpoint, a 32B bf16
    checkpoint's config (no weights) and a LoRA adapter: (url, data folder)."""
    models = tmp_path_factory.mktemp("fit-models")
    (models / "tiny").symlink_to(tiny_qwen25, target_is_directory=True)
    checkpoint_without_weights("Qwen2.5-VL-32B-Instruct", models, tiny_qwen25)
    _make_tiny_model().build_adapter(tiny_qwen25, models / "invoices")
    data = tmp_path_factory.mktemp("fit-data")
    proc, url, log = serve(models / "tiny", data, VLASSIST_DEVICE="auto", VLASSIST_COMPILE="off")
    yield url, data
    stop(proc, log)


def test_model_list_shows_format_size_and_estimate_and_greys_what_cannot_run(browser, fit_server):
    """Each checkpoint shows format, size on disk and estimate; the 32B bf16 one is greyed with the reason and
    cannot be loaded."""
    context = browser.new_context()
    tab = context.new_page()
    tab.set_default_timeout(180_000)
    tab.goto(fit_server[0])
    tab.wait_for_selector(TEXTAREA)
    section = open_model_section(tab)
    tiny = section.locator("li", has_text="tiny")
    assert "fp32 ·" in tiny.inner_text() and "GiB on disk · needs ~" in tiny.inner_text()
    big = section.locator("li", has_text="Qwen2.5-VL-32B-Instruct")
    text = big.inner_text()
    assert "bf16 ·" in text and "cannot run here" in text and "needs ~64.8 GiB" in text and "AWQ" in text
    greyed = big.evaluate("el => getComputedStyle(el.querySelector('span') || el).color")
    plain = tiny.evaluate("el => getComputedStyle(el).color")
    assert greyed != plain
    section.get_by_role("combobox").first.click()
    options = tab.locator('[role="option"]')
    options.first.wait_for()
    assert "Qwen2.5-VL-32B-Instruct · qwen2_5_vl (does not fit)" in [t.strip() for t in options.all_inner_texts()]
    tab.locator('[role="option"]', has_text="Qwen2.5-VL-32B").click()
    assert section.get_by_role("button", name="Load").is_disabled()
    context.close()


def test_adapter_picked_in_the_page_is_loaded_and_recorded_with_answers(browser, fit_server):
    """Picking the adapter and Load switches to `tiny+invoices`; the next answer is stored with that adapter."""
    # A tall window: the adapter picker sits below the fold of the sidebar, where its dropdown would open off-screen.
    context = browser.new_context(viewport={"width": 1280, "height": 1600})
    tab = context.new_page()
    tab.set_default_timeout(180_000)
    tab.goto(fit_server[0])
    tab.wait_for_selector(TEXTAREA)
    section = open_model_section(tab)
    picker = section.locator('[data-testid="stSelectbox"]', has_text="LoRA adapter")
    picker.get_by_role("combobox").click()
    tab.locator('[role="option"]', has_text="invoices").click()
    tab.wait_for_function("el => el.value === 'invoices'", arg=picker.get_by_role("combobox").element_handle())
    section.get_by_role("button", name="Load").click()
    # The switch may end before a loaded machine draws its progress: wait for its outcome, not for the view.
    deadline = time.monotonic() + 180
    while True:
        tab.wait_for_selector(TEXTAREA)
        tab.locator(PROGRESS).wait_for(state="detached")
        section = open_model_section(tab)
        in_use = section.locator("p", has_text="In use").inner_text()
        if "tiny+invoices" in in_use or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "tiny+invoices" in in_use, section.inner_text()
    set_length(tab, "128")
    ask(tab, "Answered with the adapter")
    tab.locator(ASSISTANT).last.get_by_text("tokens/s").wait_for()
    answer = conversation(fit_server[1], "Answered with the adapter").messages[-1]
    assert answer.adapter is not None and answer.adapter.endswith("invoices")
    assert answer.weights_format == "fp32" and answer.model.endswith("tiny")
    context.close()
