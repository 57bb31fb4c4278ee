"""The model-load progress view (AppTest): a check mark only for a load that ended ready at 100 %."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest


def _follow(states: list[dict]) -> AppTest:
    """Run follow_load over a slot whose state goes through `states` (LoadState fields), one per look."""

    def script(states):
        import streamlit as st

        from vlassist.service.models import LoadState
        from vlassist.ui import models_panel

        class Slot:  # what follow_load reads: the slot's current state
            def __init__(self):
                # The first state twice: follow_load reads it once to set up, then once a poll.
                self.seen = iter([LoadState(started=1.0, target="m", **fields) for fields in states[:1] + states])
                self.last = None

            @property
            def state(self):
                self.last = next(self.seen, self.last)
                return self.last

        models_panel.POLL_S = 0.01
        models_panel.follow_load(Slot(), st.empty(), None)

    at = AppTest.from_function(script, args=(states,), default_timeout=30).run()
    assert not at.exception, at.exception
    return at


def _checks(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if "material/check" in m.value] + [
        s.icon for s in at.status if "check" in s.icon]


def test_failed_load_at_zero_percent_shows_no_check_mark():
    """A load that failed at 0 % shows no check mark: an error status, its stage marked failed."""
    at = _follow([dict(phase="loading", stage="start"), dict(phase="failed", stage="start")])
    assert _checks(at) == []
    assert at.status[0].proto.state == at.status[0].proto.State.ERROR
    assert "failed" in at.markdown[-1].value


def test_stage_of_a_failed_switch_is_not_checked_off():
    """A switch whose model failed to load and whose old model then failed too: the stage it failed in (left for
    the reload) gets a cross, not a check mark."""
    at = _follow([dict(phase="switching", stage="weights", fraction=0.4),
                  dict(phase="switching", stage="start", fraction=0.0),
                  dict(phase="failed", stage="start", fraction=0.0)])
    assert _checks(at) == []
    assert ":material/close: Reading weights" in at.markdown[-1].value


def test_load_ended_without_reaching_100_percent_shows_no_check_mark():
    """A load that is not busy any more but never reached 100 % is not shown as complete."""
    at = _follow([dict(phase="ready", stage="read", fraction=0.0)])
    assert _checks(at) == []


def test_finished_load_shows_check_marks():
    """A load that ended ready at 100 % shows its stages checked off and a complete status."""
    at = _follow([dict(phase="loading", stage="start"), dict(phase="loading", stage="weights", fraction=0.5),
                  dict(phase="ready", stage="ready", fraction=1.0)])
    assert at.status[0].proto.state == at.status[0].proto.State.COMPLETE
    assert ":material/check: Reading weights" in at.markdown[-1].value
