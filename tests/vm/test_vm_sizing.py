"""The pod VM grows to fit its containers' CPU and memory limits, and shrinks back (vmrt only).

Every VM here boots with 1 vCPU and 512 MiB and may grow to 4 vCPUs and
2 GiB (a private config). What is checked is what the containers see:
`nproc` and `/proc/meminfo` printed by a container's own program, or written
by a looping program to a file of its rootfs, which the test reads on the
host through virtio-fs.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.procs import wait_until
from helpers.rootfs import edit_config
from helpers.runtime import Runtime

pytestmark = pytest.mark.vm

GiB_KIB = 1 << 20
BASE_KIB = 512 << 10
REPORT = "nproc; grep MemTotal /proc/meminfo"
# Writes what it sees to /size every 0.2 s, forever.
WATCH = ["sh", "-c", f"while :; do ({REPORT}) > /size.tmp; mv /size.tmp /size; sleep 0.2; done"]


@pytest.fixture(autouse=True)
def _vmrt_only(runtime: Runtime, vmrt_config: Callable[[str], Path]) -> None:
    if not runtime.is_vmrt:
        pytest.skip("VM sizing is a VM runtime's notion; runc has none")
    vmrt_config("vcpus = 1\nmemory_mib = 512\nmax_vcpus = 4\nmax_memory_mib = 2048\n")


def limits(b: Path, *, cpus: float | None = None, memory_mib: int | None = None,
           annotations: dict[str, str] | None = None) -> Path:
    def edit(spec: dict[str, Any]) -> None:
        res = spec["linux"]["resources"]
        if cpus is not None:
            res["cpu"] = {"quota": int(cpus * 100_000), "period": 100_000}
        if memory_mib is not None:
            res["memory"] = {"limit": memory_mib << 20}
        if annotations:
            spec["annotations"] = annotations

    edit_config(b, edit)
    return b


def parse(text: str) -> tuple[int, int]:
    """(nproc, MemTotal kB) from REPORT's output."""
    lines = text.split("\n")
    assert len(lines) >= 2 and lines[1].startswith("MemTotal:"), text
    return int(lines[0]), int(lines[1].split()[1])


def seen(b: Path) -> tuple[int, int] | None:
    try:
        return parse((b / "rootfs" / "size").read_text())
    except (FileNotFoundError, AssertionError, ValueError):
        return None


def wait_seen(b: Path, pred, timeout: float = 60) -> tuple[int, int]:  # noqa: ANN001
    last: list[tuple[int, int] | None] = [None]

    def check() -> bool:
        last[0] = seen(b)
        return last[0] is not None and bool(pred(*last[0]))

    assert wait_until(check, timeout, interval=0.1), f"the container saw {last[0]}"
    assert last[0] is not None
    return last[0]


def test_a_container_asking_2_cpus_and_1g_sees_them(runtime: Runtime, bundle, new_id) -> None:
    b = limits(bundle(["sh", "-c", REPORT]), cpus=2, memory_mib=1024)
    res = runtime.run("run", "--bundle", str(b), new_id())
    assert res.returncode == 0, res
    nproc, mem_kib = parse(res.stdout)
    assert nproc == 3, res.stdout  # the base vCPU + the 2 the container asked for
    assert mem_kib > GiB_KIB, res.stdout  # 512 MiB + 1 GiB, less the kernel's own


def test_growth_stops_at_the_configured_bounds(runtime: Runtime, bundle, new_id) -> None:
    b = limits(bundle(["sh", "-c", REPORT]), cpus=64, memory_mib=64 << 10)
    res = runtime.run("run", "--bundle", str(b), new_id())
    assert res.returncode == 0, res
    nproc, mem_kib = parse(res.stdout)
    assert nproc == 4, res.stdout
    assert 1.5 * GiB_KIB < mem_kib <= 2 * GiB_KIB, res.stdout


def test_update_grows_the_vm_and_gives_it_back(runtime: Runtime, bundle, new_id) -> None:
    cid = new_id()
    b = bundle(WATCH)
    runtime.ok("run", "--detach", "--bundle", str(b), cid)
    try:
        assert wait_seen(b, lambda n, m: n == 1 and m < BASE_KIB)
        runtime.ok("update", "--memory", "1g", "--cpu-quota", "200000", "--cpu-period",
                   "100000", cid)
        # the container was there before the vCPUs: cgroup v2's cpuset follows them
        assert wait_seen(b, lambda n, m: n == 3 and m > GiB_KIB)
        runtime.ok("update", "--memory", "64m", "--cpu-quota", "-1", cid)
        assert wait_seen(b, lambda n, m: n == 1 and m < BASE_KIB + (256 << 10))
    finally:
        runtime.ok("delete", "--force", cid)


CRIO_SANDBOX = {"io.kubernetes.cri-o.ContainerType": "sandbox",
                "io.kubernetes.cri-o.SandboxName": "{pod}"}
CRIO_MEMBER = {"io.kubernetes.cri-o.ContainerType": "container",
               "io.kubernetes.cri-o.SandboxID": "{sid}"}


def test_a_member_grows_the_pod_vm_and_it_shrinks_back_when_deleted(
        runtime: Runtime, bundle, new_id) -> None:
    sid, member = new_id(), new_id()
    pod = f"pod-{sid}"
    infra = limits(bundle(WATCH), annotations={k: v.format(pod=pod, sid=sid)
                                               for k, v in CRIO_SANDBOX.items()})
    runtime.ok("run", "--detach", "--bundle", str(infra), sid)
    try:
        assert wait_seen(infra, lambda n, m: n == 1 and m < BASE_KIB)
        joiner = limits(bundle(["sh", "-c", f"{REPORT}; sleep 1000"]), cpus=2, memory_mib=1024,
                        annotations={k: v.format(pod=pod, sid=sid)
                                     for k, v in CRIO_MEMBER.items()})
        out, err = joiner / "stdout", joiner / "stderr"
        # Files, not pipes: the shim holds the container's stdio for as long as it runs.
        with open(out, "wb") as f, open(err, "wb") as e:
            res = subprocess.run(runtime.argv("create", "--bundle", str(joiner), member),
                                 stdin=subprocess.DEVNULL, stdout=f, stderr=e,
                                 timeout=runtime.spec.op_timeout, check=False)
        assert res.returncode == 0, err.read_text()
        runtime.ok("start", member)
        assert wait_until(lambda: out.read_text().count("\n") >= 2, 60), out.read_text()
        nproc, mem_kib = parse(out.read_text())
        assert (nproc, mem_kib > GiB_KIB) == (3, True), out.read_text()
        assert wait_seen(infra, lambda n, m: n == 3 and m > GiB_KIB)

        started = time.monotonic()
        runtime.ok("delete", "--force", member)
        nproc, mem_kib = wait_seen(infra, lambda n, m: n == 1 and m < BASE_KIB + (256 << 10))
        print(f"shrunk to {nproc} vCPU, {mem_kib} kB in {time.monotonic() - started:.1f}s")
    finally:
        runtime.run("delete", "--force", member)
        runtime.ok("delete", "--force", sid)
