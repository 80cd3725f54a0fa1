"""`vmrt image build` shows a status line on a terminal and nothing in CI (non-tty).

Each test really builds a guest root into a private cache: the built image's kernel
is reused (config `kernel`), the cached .debs are copied in, so the build runs every
step that reports progress (unpack, prune, precompile, check, pack) in a few seconds.
Marked `vm` because it needs what `make image` leaves in the user's cache.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmrt.image.debs import RESOLVE_CACHE_NAME
from vmrt.image.rootfs import DEBS_DIR_NAME

pytestmark = pytest.mark.vm

VMRT = str(Path(sys.executable).parent / "vmrt")
BUILD_TIMEOUT = 300.0


def built_image() -> tuple[Path, Path]:
    """(kernel, cache dir) of the user's built image."""
    res = subprocess.run([VMRT, "image", "build"], capture_output=True, text=True,
                         timeout=BUILD_TIMEOUT, check=True, stdin=subprocess.DEVNULL)
    paths = dict(line.split(" ", 1) for line in res.stdout.splitlines())
    kernel = Path(paths["kernel"])
    return kernel, Path(paths["initrd"]).parent.parent


@pytest.fixture
def private_cache(tmp_path: Path) -> Iterator[Path]:
    """A config whose cache has the packages but no built root."""
    kernel, cache = built_image()
    mine = tmp_path / "cache"
    mine.mkdir()
    shutil.copytree(cache / DEBS_DIR_NAME, mine / DEBS_DIR_NAME)
    if (cache / RESOLVE_CACHE_NAME).is_file():
        shutil.copy(cache / RESOLVE_CACHE_NAME, mine / RESOLVE_CACHE_NAME)
    config = tmp_path / "config.toml"
    config.write_text(f'kernel = "{kernel}"\ncache_dir = "{mine}"\n')
    yield config
    shutil.rmtree(mine, ignore_errors=True)  # tens of MB per build


def test_quiet_when_stderr_is_not_a_terminal(private_cache: Path) -> None:
    res = subprocess.run([VMRT, "--config", str(private_cache), "image", "build"],
                         capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res
    assert res.stderr == "", "CI logs must not fill with status lines"
    assert [line.split()[0] for line in res.stdout.splitlines()] == ["kernel", "initrd"]
    assert str(private_cache.parent / "cache") in res.stdout, "the build did not use the private cache"


def test_status_line_on_a_terminal(private_cache: Path) -> None:
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([VMRT, "--config", str(private_cache), "image", "build"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        slave = -1
        err = b""
        deadline = time.monotonic() + BUILD_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    err += os.read(master, 65536)
                except OSError:  # EIO: the last writer closed the terminal
                    break
        out = proc.communicate(timeout=30)[0].decode()
        while select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0, (out, err)
    text = err.decode()
    assert "\n" not in text, f"progress must stay on one line: {text!r}"
    draws = [d for d in text.split("\r\x1b[K") if d]
    steps = [d.split("] ", 1)[1] for d in draws]
    for step in ("unpacking", "precompiling python", "packing the initramfs", "built "):
        assert any(s.startswith(step) for s in steps), f"no {step!r} step in {steps}"
    assert text.endswith("\r\x1b[K"), "the status line is cleared before the result is printed"
    assert [line.split()[0] for line in out.splitlines()] == ["kernel", "initrd"]
