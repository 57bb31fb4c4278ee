"""A server process killed with SIGKILL mid-answer: the stored answer is at most about a second behind the stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT

from vlassist.service.conversations import PERSIST_EVERY_CHUNKS
from vlassist.store.history import History

CHILD = r"""
import json, sys, time
from vlassist.config import load_settings
from vlassist.conversation import GenerationOptions
from vlassist.engine import load_engine
from vlassist.service import conversations
from vlassist.service.answering import AnswerService
from vlassist.store.history import History

model, data = sys.argv[1], sys.argv[2]
engine = load_engine(load_settings({"VLASSIST_MODEL_DIR": model, "VLASSIST_DEVICE": "cpu"}))
store = History.open(data).for_owner("local")
conversation_id = store.create_conversation("crash")
job = conversations.ask(AnswerService(engine), store, conversation_id, "Write for a long time",
                        options=GenerationOptions(max_new_tokens=3000, min_new_tokens=3000))
for chunk in job.chunks(poll_s=0.005):
    print(json.dumps([time.monotonic(), chunk]), flush=True)
"""


def run_and_kill(model, data, after_chunks: int) -> tuple[list[tuple[float, str]], float]:
    """Start an answer in a child process, SIGKILL it after `after_chunks` streamed chunks: (chunks seen, when)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(model), str(data)], stdout=subprocess.PIPE,
                             env=env, cwd=ROOT, text=True)
    seen, killed_at = [], 0.0
    try:
        for line in child.stdout:
            seen.append(tuple(json.loads(line)))
            if len(seen) >= after_chunks:
                os.kill(child.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                break
    finally:
        child.kill()
        child.wait()
    assert len(seen) >= after_chunks, "the child ended before it streamed enough"
    return seen, killed_at


def test_sigkill_mid_answer_loses_at_most_about_a_second(tiny_qwen25, tmp_path):
    """After kill -9 the stored answer holds the streamed text up to the last write, and restart marks it stopped."""
    seen, killed_at = run_and_kill(tiny_qwen25, tmp_path, after_chunks=300)
    shown = "".join(chunk for _, chunk in seen)
    history = History.open(tmp_path)
    try:
        assert history.mark_running_interrupted() == 1
        [summary] = history.for_owner("local").list_conversations()
        conversation = history.for_owner("local").get_conversation(summary.id)
    finally:
        history.close()
    question, answer = conversation.messages
    assert (question.role, answer.role, answer.status) == ("user", "assistant", "interrupted")
    assert answer.text and (shown.startswith(answer.text) or answer.text.startswith(shown))
    stored_chunks = next((i + 1 for i in range(len(seen)) if len("".join(c for _, c in seen[:i + 1]))
                          >= len(answer.text)), len(seen))
    lost_chunks = len(seen) - stored_chunks
    lost_s = killed_at - seen[stored_chunks - 1][0] if lost_chunks else 0.0
    # Written every PERSIST_EVERY_CHUNKS chunks or every second, whichever comes first.
    assert lost_chunks <= PERSIST_EVERY_CHUNKS or lost_s <= 1.5, (lost_chunks, lost_s)
