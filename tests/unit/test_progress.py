"""The status line of long work: one line redrawn in place on a terminal, nothing elsewhere."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import termios
import time
from collections.abc import Iterator

import pytest

from vmrt.cli.progress import CLEAR_LINE, StatusLine, progress_for


@pytest.fixture
def terminal() -> Iterator[tuple[io.TextIOWrapper, int]]:
    """A real terminal 40 columns wide: (writer on the slave, master fd to read)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 40, 0, 0))
    stream = os.fdopen(slave, "w", encoding="utf-8")
    yield stream, master
    stream.close()
    os.close(master)


def drain(master: int) -> str:
    out = b""
    while select.select([master], [], [], 0.2)[0]:
        chunk = os.read(master, 65536)
        if not chunk:
            break
        out += chunk
    return out.decode()


def test_not_a_terminal_means_no_callback() -> None:
    with progress_for(io.StringIO()) as progress:
        assert progress is None


def test_one_line_redrawn_in_place_and_cleared(terminal: tuple[io.TextIOWrapper, int]) -> None:
    stream, master = terminal
    with progress_for(stream) as progress:
        assert progress is not None
        progress("unpacking 19 packages")
        progress("downloading 19 packages: " + " ".join(f"libsomething{i}" for i in range(19)))
        progress("precompiling\npython")
    out = drain(master)
    assert "\n" not in out, "a status line never scrolls the terminal"
    draws = out.split(CLEAR_LINE)
    assert draws[0] == "" and draws[-1] == "", "every draw starts by clearing; the end clears"
    shown = [d for d in draws if d]
    assert [d.split("] ", 1)[1][:9] for d in shown] == ["unpacking", "downloadi", "precompil"]
    assert all(d.startswith("[0:00] ") for d in shown)
    assert all(len(d) < 40 for d in shown), f"a line wider than the terminal wraps: {shown}"
    assert shown[1].endswith("…")
    assert shown[2] == "[0:00] precompiling python"


def test_the_clock_ticks_between_messages(terminal: tuple[io.TextIOWrapper, int]) -> None:
    stream, master = terminal
    line = StatusLine(stream, tick=0.05)
    line("building vmlinux")
    time.sleep(0.5)  # no message for a while, as during `make`
    line.close()
    draws = [d for d in drain(master).split(CLEAR_LINE) if d]
    assert len(draws) >= 4 and set(draws) == {"[0:00] building vmlinux"}


def test_an_error_keeps_the_last_step_in_view(terminal: tuple[io.TextIOWrapper, int]) -> None:
    stream, master = terminal
    with pytest.raises(RuntimeError), progress_for(stream) as progress:
        assert progress is not None
        progress("packing the initramfs")
        raise RuntimeError("disk full")
    out = drain(master)
    assert out.endswith("[0:00] packing the initramfs\r\n")
