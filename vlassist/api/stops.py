"""Stop strings cut from a streamed answer in linear time: one prefix automaton per string, a character at a time."""

from __future__ import annotations

MAX_STOPS = 4  # as OpenAI allows
MAX_STOP_CHARS = 1000  # a stop string longer than this is a mistake (or an attack), not a delimiter


def _failure(pattern: str) -> list[int]:
    """Knuth-Morris-Pratt: for each prefix, the length of its longest proper border."""
    table = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = table[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        table[i] = k
    return table


class StopCutter:
    """Passes text through until a stop string appears; holds back a tail that could be the start of one.

    Each character is looked at once per stop string (amortized), so an answer of n characters with stop strings
    of any length costs O(n · number of stops), never O(n · length of a stop).
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._tables = [_failure(s) for s in self.stops]
        self._states = [0] * len(self.stops)  # characters of each stop string matched at the end of the text
        self.pending = ""
        self.hit = False

    def feed(self, chunk: str) -> str:
        """The text that is safe to send now; sets `hit` (and drops the rest) once a stop string is seen."""
        if self.hit:
            return ""
        start = len(self.pending)
        self.pending += chunk
        for offset, char in enumerate(chunk):
            for j, stop in enumerate(self.stops):
                k, table = self._states[j], self._tables[j]
                while k and char != stop[k]:
                    k = table[k - 1]
                if char == stop[k]:
                    k += 1
                if k == len(stop):
                    end = start + offset + 1
                    out, self.pending, self.hit = self.pending[:end - len(stop)], "", True
                    return out
                self._states[j] = k
        hold = max(self._states, default=0)  # the longest partial match still open
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        """What was held back, once the answer has ended without a stop string."""
        out, self.pending = self.pending, ""
        return out
