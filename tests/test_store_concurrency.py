"""SQLite under many writer processes with a reader running: no "database is locked", no lost rows."""

from __future__ import annotations

import multiprocessing
import time

from conftest import image_bytes

WRITERS, WRITES = 8, 50


def _writer(folder: str, index: int, results) -> None:
    from vlassist.images import load_image
    from vlassist.store.history import History, NewImage

    errors, latencies = [], []
    history = History.open(folder)
    store = history.for_owner(f"writer-{index}")
    cid = store.create_conversation(f"stress {index}")
    data = image_bytes((640, 480), (index * 20 % 255, 90, 200))
    for n in range(WRITES):
        started = time.perf_counter()
        try:
            if n % 2:
                answer = store.start_answer(cid)
                store.update_answer(answer, f"answer {n}", status="complete")
            else:
                images = [NewImage(data, load_image(data), "photo.png")] if n % 10 == 0 else []
                store.add_user_message(cid, f"question {n}", images)
        except Exception as exc:  # noqa: BLE001  counted, not raised: the test reports every failure
            errors.append(f"{type(exc).__name__}: {exc}")
        latencies.append(time.perf_counter() - started)
    history.close()
    results.put((index, errors, max(latencies)))


def _reader(folder: str, stop, results) -> None:
    from vlassist.store.history import History

    history, reads, errors = History.open(folder), 0, []
    while not stop.is_set():
        try:
            for owner in range(WRITERS):
                store = history.for_owner(f"writer-{owner}")
                for summary in store.list_conversations():
                    store.get_conversation(summary.id)
                    reads += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(str(exc))
    history.close()
    results.put(("reader", errors, reads))


def test_many_writer_processes_lose_nothing_and_never_see_a_lock(tmp_path):
    """8 writer processes × 50 writes (images included) with a reader: 0 errors, 0 lost rows."""
    from vlassist.store.history import History

    History.open(tmp_path).close()  # schema created once, as the server does at start-up
    ctx = multiprocessing.get_context("fork")
    results, stop = ctx.Queue(), ctx.Event()
    reader = ctx.Process(target=_reader, args=(str(tmp_path), stop, results))
    reader.start()
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), i, results)) for i in range(WRITERS)]
    for p in writers:
        p.start()
    outcomes = [results.get(timeout=max(170, WRITERS * WRITES / 8)) for _ in writers]
    stop.set()
    read_outcome = results.get(timeout=30)
    for p in [*writers, reader]:
        p.join(timeout=30)
    errors = [e for _, errs, _ in outcomes for e in errs] + read_outcome[1]
    print(f"writers: worst write {max(o[2] for o in outcomes):.2f} s; reader: {read_outcome[2]} reads")
    assert errors == []
    history = History.open(tmp_path)
    for i in range(WRITERS):
        store = history.for_owner(f"writer-{i}")
        [summary] = store.list_conversations()
        messages = store.get_conversation(summary.id).messages
        assert len(messages) == WRITES
        assert sum(len(m.images) for m in messages) == WRITES // 10
        assert all(m.status == "complete" for m in messages)
    history.close()


def test_reads_do_not_wait_for_a_writer(tmp_path):
    """While another connection holds the write lock, listing and reading conversations returns at once."""
    import sqlite3

    from vlassist.store.history import DB_NAME, History

    history = History.open(tmp_path)
    store = history.for_owner("local")
    cid = store.create_conversation("held")
    writer = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        started = time.perf_counter()
        assert [c.id for c in store.list_conversations()] == [cid]
        assert store.get_conversation(cid).title == "held"
        assert time.perf_counter() - started < 1.0
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        history.close()
