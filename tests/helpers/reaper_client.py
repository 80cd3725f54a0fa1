"""Drive tests/helpers/subreaper.py from a test and read its JSON reports."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .runtime import Runtime

SCRIPT = Path(__file__).with_name("subreaper.py")


class SubreaperRun:
    """A running subreaper.py: `events` are its reports, in order."""

    def __init__(
        self,
        rt: Runtime,
        bundle: Path,
        cid: str,
        pid_file: Path,
        *,
        start: bool,
        stdin: Any = subprocess.DEVNULL,
        stdout: Any = subprocess.DEVNULL,
        stderr: Any = subprocess.DEVNULL,
    ) -> None:
        self.rt = rt
        self.cid = cid
        rfd, wfd = os.pipe()
        argv = [
            sys.executable, str(SCRIPT),
            "--runtime-argv", json.dumps([rt.binary, *rt.global_args()]),
            "--bundle", str(bundle), "--pid-file", str(pid_file), "--id", cid,
            "--report-fd", str(wfd),
        ]
        if start:
            argv.append("--start")
        self.proc = subprocess.Popen(
            argv, stdin=stdin, stdout=stdout, stderr=stderr, pass_fds=(wfd,)
        )
        os.close(wfd)
        self._rfd = rfd
        self._buf = b""
        self.events: list[dict[str, Any]] = []

    def _read_event(self, deadline: float) -> dict[str, Any] | None:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._rfd], [], [], left)
            if not ready:
                return None
            chunk = os.read(self._rfd, 65536)
            if not chunk:
                return None  # helper exited
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        event = json.loads(line)
        self.events.append(event)
        return event

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        """The next report called `name` (earlier ones are kept in `events`)."""
        for event in self.events:
            if event.get("event") == name:
                return event
        deadline = time.monotonic() + timeout
        while True:
            event = self._read_event(deadline)
            if event is None:
                raise AssertionError(
                    f"subreaper helper gave no {name!r} report within {timeout}s; "
                    f"reports so far: {self.events}; helper rc={self.proc.poll()}"
                )
            if event.get("event") == name:
                return event

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self._rfd)

    def __enter__(self) -> SubreaperRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
