"""A one-line progress counter on stderr for long scans (fsck, gc).

On a terminal the line is redrawn in place a few times a second; otherwise (a log, CI) a
line is written every few seconds, so a long scan shows it is alive without flooding.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

REDRAW = 0.2
LOG_EVERY = 5.0


class ScanProgress:
    def __init__(self, enabled: bool = True, show: Callable[[int], str] = str) -> None:
        self.enabled = enabled
        self.show = show  # how counts are written (format_size for bytes)
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        self._phase = ""
        self._open = False  # a redrawn line is on screen

    def __call__(self, phase: str, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if phase == self._phase and now - self._last < (REDRAW if self.tty else LOG_EVERY):
            return
        if phase != self._phase and self._open:
            sys.stderr.write("\n")
        self._phase, self._last = phase, now
        of = f"/{self.show(total)}" if total is not None else ""
        share = f" ({100 * done / total:.0f}%)" if total else ""
        line = f"{phase}: {self.show(done)}{of}{share}"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(60))
            self._open = True
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self._open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._open = False
