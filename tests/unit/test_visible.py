"""A mount the monitor's namespace does not receive is named as such, not shared empty."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmrt.errors import SandboxError
from vmrt.runtime.visible import require_visible


@pytest.fixture
def private_ns_process() -> Iterator[int]:
    """A process in a private copy of our mount namespace: it sees none of our new mounts,
    as a monitor copied from a caller whose / is private would."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1)")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "60"])
    try:
        # wait until it is in its namespace (the exec of sleep happens after unshare)
        for _ in range(500):
            if os.readlink(f"/proc/{proc.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt") \
                    and Path(f"/proc/{proc.pid}/comm").read_text().strip() == "sleep":
                break
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_mount_made_after_the_copy_is_refused(private_ns_process: int, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    require_visible(private_ns_process, [str(plain), str(mnt)])  # same files for both
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    try:
        with pytest.raises(SandboxError, match="not visible to the pod VM's monitor"):
            require_visible(private_ns_process, [str(plain), str(mnt)])
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_missing_path_is_left_to_its_user(tmp_path: Path) -> None:
    require_visible(os.getpid(), [str(tmp_path / "absent")])
    require_visible(os.getpid(), [str(tmp_path)])
