"""Progress of a long step: documents, bytes, rate and time left, for a person watching or a log file.

On a terminal the line is rewritten in place a few times a second; otherwise (a log file, CI) a full line
is logged every ``every_s`` seconds. The ETA comes from the input bytes finished so far, so it is only
shown once some input is done.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO

TERMINAL_EVERY_S = 0.5
LOG_EVERY_S = 10.0


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Counts that a long step adds to; prints them as it goes. ``close()`` prints the final line."""

    def __init__(self, label: str, units: int, input_bytes: int, log: Callable[[str], None],
                 stream: IO[str] | None = None, every_s: float | None = None, unit_name: str = "shards"):
        self.label = label
        self.units = units
        self.unit_name = unit_name
        self.input_total = input_bytes
        self.log = log
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s if every_s is not None else (TERMINAL_EVERY_S if self.tty else LOG_EVERY_S)
        self.started = time.monotonic()
        self.last = self.started
        self.units_done = 0
        self.documents = 0
        self.bytes = 0
        self.input_done = 0
        self._dirty_line = False

    def add(self, documents: int = 0, nbytes: int = 0, units: int = 0, input_bytes: int = 0) -> None:
        self.documents += documents
        self.bytes += nbytes
        self.units_done += units
        self.input_done += input_bytes
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._show(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        rate = self.documents / elapsed
        parts = [f"[{self.label}] {self.units_done}/{self.units} {self.unit_name}", f"{self.documents:,} documents",
                 f"{human_bytes(self.bytes)} of text", f"{rate:,.0f} docs/s"]
        if self.input_total:
            parts.append(f"input {human_bytes(self.input_done)} of {human_bytes(self.input_total)}")
            if 0 < self.input_done < self.input_total:
                left = (self.input_total - self.input_done) / (self.input_done / elapsed)
                parts.append(f"ETA {human_seconds(left)}")
        elif 0 < self.units_done < self.units:
            parts.append(f"ETA {human_seconds((self.units - self.units_done) / (self.units_done / elapsed))}")
        return ", ".join(parts)

    def _show(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self.stream.flush()
            self._dirty_line = True
        else:
            self.log(line)

    def close(self) -> None:
        if self._dirty_line:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        elapsed = time.monotonic() - self.started
        if elapsed >= self.every_s:  # a step that took a moment says how it ended
            self.log(self.line() + f" in {human_seconds(elapsed)}")
