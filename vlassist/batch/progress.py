"""Batch progress on stderr (tqdm): rows, files, pages, rows/min, ETA and failures; and the summary at the end."""

from __future__ import annotations

import sys
import time
from collections import Counter

from vlassist.batch.inputs import Item

SHOWN_FAILURES = 10  # failures listed by name in the summary; the rest are counted


class Progress:
    """A progress bar over the rows to answer in this run."""

    def __init__(self, todo: list[Item], enabled: bool = True, stream=None):
        from tqdm import tqdm

        self.stream = stream or sys.stderr
        self.left_per_file = Counter(item.source for item in todo)
        self.files = len(self.left_per_file)
        self.files_done = self.pages_done = self.ok = self.failed = self.truncated = 0
        self.failures: list[tuple[str, str]] = []
        self.started = time.monotonic()
        self.bar = tqdm(total=len(todo), unit="row", file=self.stream, disable=not (enabled and todo),
                        dynamic_ncols=True, mininterval=0.5, desc="batch")
        self._postfix()

    def row(self, item: Item, row: dict) -> None:
        """Count one written row."""
        if row["status"] == "ok":
            self.ok += 1
        elif row["status"] == "truncated":
            self.truncated += 1
        else:
            self.failed += 1
            self.failures.append((f"{item.source}" + (f" page {item.page}" if item.page else ""), row["error"]))
        self.pages_done += item.page is not None
        self.left_per_file[item.source] -= 1
        self.files_done += self.left_per_file[item.source] == 0
        self._postfix()
        self.bar.update(1)

    @property
    def per_minute(self) -> float:
        """Rows finished per minute so far in this run."""
        elapsed = time.monotonic() - self.started
        return (self.ok + self.failed + self.truncated) * 60.0 / elapsed if elapsed > 0 else 0.0

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"files {self.files_done}/{self.files}, pages {self.pages_done}, "
                                 f"{self.per_minute:.1f} rows/min, failed {self.failed}, truncated {self.truncated}",
                                 refresh=False)

    def close(self) -> None:
        """End the bar (before the summary is printed)."""
        self.bar.close()

    def summary(self, skipped: int, failed_earlier: int, interrupted: bool, out: str) -> str:
        """What this run did, the failures by name, and where the results are."""
        elapsed = time.monotonic() - self.started
        done = self.ok + self.failed + self.truncated
        lines = [f"vlassist batch: {done} row{'s' * (done != 1)} answered in {_duration(elapsed)} "
                 f"({self.per_minute:.1f} rows/min): {self.ok} ok, {self.truncated} truncated, {self.failed} failed; "
                 f"{skipped} already done (skipped)"]
        if self.truncated:
            lines.append(f"  {self.truncated} row{'s' * (self.truncated != 1)} ended at the answer length and "
                         "may be cut off (status truncated); rerun with --retry-failed and a larger "
                         "--max-new-tokens")
        if failed_earlier:
            verb = "was" if failed_earlier == 1 else "were"
            lines.append(f"  {failed_earlier} row{'s' * (failed_earlier != 1)} failed or {verb} truncated in an "
                         f"earlier run and {verb} skipped; rerun with --retry-failed to try again")
        for name, error in self.failures[:SHOWN_FAILURES]:
            lines.append(f"  failed: {error}" if error.startswith(name) else f"  failed: {name}: {error}")
        if len(self.failures) > SHOWN_FAILURES:
            lines.append(f"  … and {len(self.failures) - SHOWN_FAILURES} more failures (see the error column)")
        if interrupted:
            lines.append("interrupted: every finished row is saved; run the same command again to continue")
        lines.append(f"results: {out}")
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
