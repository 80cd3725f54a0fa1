"""Progress of long work on a terminal: one status line that updates in place.

Only a terminal gets it. Under CI, conmon or a pipe, stderr is a log that
someone reads later (or a container manager's error channel): there, long
work stays silent, as runc is. On a terminal each message replaces the last
on one line, prefixed by the elapsed time, which keeps ticking between
messages (the kernel's `make` says nothing for minutes).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

TICK_S = 1.0
CLEAR_LINE = "\r\x1b[K"


class StatusLine:
    """Callable as a `progress(message)` callback; `close()` leaves the line clean."""

    def __init__(self, stream: TextIO, *, tick: float = TICK_S) -> None:
        self._stream = stream
        self._started = time.monotonic()
        self._message = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, args=(tick,), daemon=True,
                                        name="vmrt-progress")
        self._ticker.start()

    def __call__(self, message: str) -> None:
        with self._lock:
            self._message = " ".join(message.split())  # one line whatever the builder said
            self._draw()

    def close(self, *, keep: bool = False) -> None:
        """Stop ticking; clear the line, or end it with a newline to `keep` it in view."""
        self._stop.set()
        self._ticker.join()
        with self._lock:
            if not self._message:
                return
            self._stream.write("\n" if keep else CLEAR_LINE)
            self._stream.flush()

    def _tick(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._lock:
                if self._message:
                    self._draw()

    def _draw(self) -> None:
        elapsed = int(time.monotonic() - self._started)
        line = f"[{elapsed // 60:d}:{elapsed % 60:02d}] {self._message}"
        width = _width(self._stream)
        if len(line) > width - 1:  # a wrapped line cannot be redrawn in place
            line = line[: max(width - 2, 0)] + "…"
        self._stream.write(CLEAR_LINE + line)
        self._stream.flush()


def _width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError):
        return 80


@contextlib.contextmanager
def progress_for(stream: TextIO) -> Iterator[Callable[[str], None] | None]:
    """A progress callback for `stream` if it is a terminal, else None (stay quiet).

    On success the status line is cleared; on an error it is kept, so the
    user sees which step failed above the error message.
    """
    if not stream.isatty():
        yield None
        return
    line = StatusLine(stream)
    try:
        yield line
    except BaseException:
        line.close(keep=True)
        raise
    line.close()
