"""runc-compatible logging: `--log FILE --log-format text|json`.

conmon and containerd read the runtime's log file after a failure and show
its last error line to the user, so error lines must be exactly runc's
shape: {"level":"error","msg":"...","time":"<RFC 3339>"}.
"""

from __future__ import annotations

import json
import os
import sys


def _now() -> str:
    import datetime  # only when a line is written: `vmrt state` writes none

    return datetime.datetime.now(datetime.UTC).astimezone().isoformat(timespec="seconds")


class Logger:
    """Where log lines go; `context` fields are added to every line (the container's id).
    A plain class: `dataclasses` is not imported on the CLI's path (util/record.py)."""

    def __init__(self, path: str | None = None, fmt: str = "text", debug_enabled: bool = False,
                 context: dict[str, str] | None = None) -> None:
        self.path = path
        self.fmt = fmt
        self.debug_enabled = debug_enabled
        self.context: dict[str, str] = dict(context or {})

    def _write(self, level: str, msg: str, **fields: object) -> None:
        if self.path is None:
            # Errors reach stderr through the CLI's one error path; only debug chatter here.
            if self.debug_enabled and level != "error":
                sys.stderr.write(f"{level}: {msg}\n")
            return
        record: dict[str, object] = {"level": level, "msg": msg, "time": _now()}
        record.update(self.context)
        record.update(fields)
        if self.fmt == "json":
            line = json.dumps(record, default=str)
        else:
            extra = "".join(f" {k}={v}" for k, v in record.items() if k not in ("level", "msg", "time"))
            line = f'time="{record["time"]}" level={level} msg="{msg}"{extra}'
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return
        try:  # a log that cannot take a line (a full disk) must not fail what is logged
            os.write(fd, (line + "\n").encode())
        except OSError:
            pass
        finally:
            os.close(fd)

    def debug(self, msg: str, **fields: object) -> None:
        if self.debug_enabled:
            self._write("debug", msg, **fields)

    def info(self, msg: str, **fields: object) -> None:
        if self.debug_enabled:
            self._write("info", msg, **fields)

    def warning(self, msg: str, **fields: object) -> None:
        self._write("warning", msg, **fields)

    def error(self, msg: str, **fields: object) -> None:
        self._write("error", msg, **fields)


_logger = Logger()


def setup(path: str | None, fmt: str, debug: bool) -> Logger:
    global _logger
    _logger = Logger(path=path, fmt=fmt, debug_enabled=debug)
    return _logger


def get() -> Logger:
    return _logger
