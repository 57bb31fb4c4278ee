"""Stop strings: cut at the first complete one, across chunks, with overlaps handled and nothing held back too long."""

from __future__ import annotations

from vlassist.api.stops import StopCutter


def _run(stops, chunks) -> tuple[str, bool]:
    cutter = StopCutter(stops)
    out = "".join(cutter.feed(chunk) for chunk in chunks)
    return (out if cutter.hit else out + cutter.flush()), cutter.hit


def test_a_stop_string_split_over_one_character_chunks_is_found():
    """A stop arriving one character at a time still cuts the text just before it."""
    assert _run(["END"], list("the END of it")) == ("the ", True)


def test_a_partial_match_that_fails_falls_back_to_a_shorter_one():
    """`aab` in `aaab` is found although the first `aa` led nowhere (prefix automaton, not a restart)."""
    assert _run(["aab"], ["a", "a", "a", "b", "tail"]) == ("a", True)


def test_the_first_stop_to_complete_wins():
    """With several stops the text ends at whichever is complete first."""
    assert _run(["##", "xyz"], ["ab xy", "z ##"]) == ("ab ", True)


def test_text_that_cannot_start_a_stop_is_sent_at_once():
    """Only a tail that could still become a stop string is held back."""
    cutter = StopCutter(["END"])
    assert cutter.feed("hello E") == "hello " and cutter.feed("x") == "Ex"


def test_a_long_stop_string_against_a_long_near_miss_is_answered_exactly():
    """A 1,000-character stop against 200,000 characters that keep almost matching: no false hit, all text out."""
    stop = "a" * 999 + "b"
    text = ("a" * 999 + "c") * 200
    assert _run([stop], [text[i:i + 7] for i in range(0, len(text), 7)]) == (text, False)
