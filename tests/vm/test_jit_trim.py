"""Under TCG the monitor gives back the dead part of QEMU's translation cache (vmrt only).

A boot fills the cache and flushes it once; the pages past the new fill level
hold nothing live. What is checked is what a user would: the resident size of
QEMU's translation buffer falls well below its capacity once the pod is quiet,
and a guest whose cache was trimmed, then filled and flushed through the
released pages again and again, still runs its programs correctly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.procs import jit_rss, wait_until
from helpers.runtime import Runtime

pytestmark = pytest.mark.vm

MiB = 1 << 20
SLEEP = ["sleep", "100000"]
#: New guest code for TCG to translate: many applets, many kernel paths.
WORKLOAD = ("ls -R / >/dev/null 2>&1; find / -name nothing 2>/dev/null; ps >/dev/null; "
            "df >/dev/null; sort /proc/self/maps | wc -l >/dev/null; echo $((6 * 7))")


@pytest.fixture(autouse=True)
def _vmrt_only(runtime: Runtime) -> None:
    if not runtime.is_vmrt:
        pytest.skip("QEMU's translation cache is a VM runtime's")


def _vm(runtime: Runtime) -> dict[str, Any]:
    [vm] = json.loads(runtime.ok("debug", "ls", "--format", "json").stdout)
    if vm["accel"] != "tcg":
        pytest.skip("no translation cache under KVM")
    return vm


def _info_jit(runtime: Runtime, cid: str) -> tuple[int, int]:
    """(fill level, flush count) from QEMU's `info jit`."""
    text = runtime.ok("debug", "qmp", cid, "human-monitor-command",
                      '{"command-line": "info jit"}').stdout
    used = re.search(r"gen code size\s+(\d+)/", text)
    flushes = re.search(r"TB flush count\s+(\d+)", text)
    assert used and flushes, text
    return int(used.group(1)), int(flushes.group(1))


def test_a_quiet_pod_holds_only_its_live_translations(
        runtime: Runtime, bundle, new_id, vmrt_config: Callable[[str], Path]) -> None:
    vmrt_config("tb_size_mib = 64\n")
    cid = new_id()
    runtime.ok("run", "--detach", "--bundle", str(bundle(SLEEP)), cid)
    try:
        qemu = _vm(runtime)["qemu"]["pid"]
        assert wait_until(lambda: jit_rss(qemu) <= 48 * MiB, timeout=30), \
            f"QEMU still holds {jit_rss(qemu) / MiB:.0f} MiB of its 64 MiB translation cache"
        used, _ = _info_jit(runtime, cid)
        assert jit_rss(qemu) >= used, "live translations were released"
        assert runtime.ok("exec", cid, "sh", "-c", WORKLOAD).stdout.split()[-1] == "42"
    finally:
        runtime.ok("delete", "--force", cid)


def test_a_trimmed_guest_keeps_running_through_flushes(
        runtime: Runtime, bundle, new_id, vmrt_config: Callable[[str], Path]) -> None:
    """A 16 MiB cache flushes every few programs: each round writes new translations into
    pages the last trim released, wraps, and is trimmed again."""
    vmrt_config("tb_size_mib = 16\n")
    cid = new_id()
    runtime.ok("run", "--detach", "--bundle", str(bundle(SLEEP)), cid)
    try:
        _vm(runtime)
        log = runtime.root / "sandboxes" / cid / "monitor.log"

        def trims() -> int:
            return log.read_text().count("released dead translations")

        assert wait_until(lambda: trims() >= 1, timeout=30), "no trim after the boot"
        _, flushes_before = _info_jit(runtime, cid)
        for _ in range(3):
            done = trims()
            out = runtime.ok("exec", cid, "sh", "-c", WORKLOAD).stdout
            assert out.split()[-1] == "42", out
            assert wait_until(lambda d=done: trims() > d, timeout=30), "no trim after a flush"
        _, flushes_after = _info_jit(runtime, cid)
        assert flushes_after >= flushes_before + 3, "the cache never wrapped through the trims"
        assert runtime.ok("exec", cid, "echo", "still-here").stdout.strip() == "still-here"
    finally:
        runtime.ok("delete", "--force", cid)
