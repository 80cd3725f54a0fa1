"""Host memory of idle pods: PSS (from /proc/<pid>/smaps_rollup) of every host process a
pod costs — QEMU, the monitor, the shims, virtiofsd — summed and divided by the pods.

PSS splits each shared page among the processes mapping it (QEMU's binary, the
page cache of the erofs root, the interpreter's libraries), so the per-pod
figure falls as pods are added: it is measured for 1 and for 10 pods.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

from lab import REPO, Lab, Root, member_of
from pods import READY, pod_bundle
from stats import Figure

SETTLE_S = 3.0


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_by_kind(root: Path) -> dict[str, float]:
    """MiB of PSS per kind of vmrt process under `root` (procscan's classification)."""
    sys.path.insert(0, str(REPO / "src"))
    from vmrt.runtime import procscan

    out: dict[str, float] = {}
    for proc in procscan.scan(root):
        out[proc.kind] = out.get(proc.kind, 0.0) + pss_kib(proc.pid) / 1024
    return out


def settled(root: Path, readings: int = 3) -> dict[str, float]:
    """Median of a few readings, a second apart, after the guests settled."""
    time.sleep(SETTLE_S)
    samples = []
    for _ in range(readings):
        samples.append(pss_by_kind(root))
        time.sleep(1.0)
    kinds = {k for s in samples for k in s}
    return {k: statistics.median(s.get(k, 0.0) for s in samples) for k in sorted(kinds)}


def idle_pods(lab: Lab, root: Root, count: int, already: list[str], *,
              cpu: bool = False) -> dict[str, float]:
    """Bring `root` to `count` idle pods (keeping `already`); PSS per pod, by kind."""
    bundle = pod_bundle(lab)
    while len(already) < count:
        cid = lab.new_id("idle")
        # create + start, as conmon and containerd's shim call them: the shim is a fork of
        # the `create` process, so what `create` imported is what the shim weighs.
        root.call("create", "--bundle", str(bundle), cid)
        already.append(cid)
        root.call("start", cid)
    kinds = settled(root.path)
    per_pod = {k: v / count for k, v in kinds.items()}
    per_pod["total"] = sum(kinds.values()) / count
    if cpu:
        per_pod["cpu_pct"] = cpu_percent(root.path) / count
    return per_pod


def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def cpu_percent(root: Path, seconds: float = 10.0) -> float:
    """% of one host CPU that `root`'s vmrt processes use while idle (what an idle pod
    costs the node, and what bounds how many fit)."""
    sys.path.insert(0, str(REPO / "src"))
    from vmrt.runtime import procscan

    pids = [p.pid for p in procscan.scan(root)]
    before = sum(_cpu_ticks(p) for p in pids)
    time.sleep(seconds)
    used = sum(_cpu_ticks(p) for p in pids) - before
    return 100.0 * used / os.sysconf("SC_CLK_TCK") / seconds


def jit_pss_mib(root: Path) -> float:
    """MiB of PSS in the TCG translation caches of `root`'s QEMUs (split-wx memfds)."""
    sys.path.insert(0, str(REPO / "src"))
    from vmrt.runtime import procscan

    total = 0
    for proc in procscan.scan(root):
        if proc.kind != "qemu":
            continue
        inside = False
        try:
            with open(f"/proc/{proc.pid}/smaps") as f:
                for line in f:
                    fields = line.split()
                    if fields and "-" in fields[0] and ":" not in fields[0]:
                        inside = line.rstrip().endswith("/memfd:tcg-jit (deleted)")
                    elif inside and line.startswith("Pss:"):
                        total += int(fields[1])
        except OSError:
            pass
    return total / 1024


def per_extra_container(lab: Lab, root: Root, pod: str, extra: int) -> Figure:
    """PSS a pod gains per member container (a shim, a virtiofsd, the guest's share).

    Without QEMU's translation cache: how much of it is resident follows TCG's flushes
    and the monitor's trims (docs/architecture.md), not the number of containers, and
    with it the difference came out negative in one run (-8 MiB)."""
    before = sum(settled(root.path).values()) - jit_pss_mib(root.path)
    bundle = lab.bundle(READY, member_of(pod))
    members = []
    try:
        for _ in range(extra):
            cid = lab.new_id("extra")
            root.call("create", "--bundle", str(bundle), cid)
            members.append(cid)
            root.call("start", cid)
        after = sum(settled(root.path).values()) - jit_pss_mib(root.path)
    finally:
        for cid in members:
            root.delete(cid)
    return Figure([(after - before) / extra], unit="MiB",
                  note=f"PSS gained by one pod per member container ({extra} members), "
                       "QEMU's translation cache left out")


def pool_vm_pss(root: Root) -> float:
    """MiB of PSS an idle, ready pool VM costs (its monitor and QEMU), after settling."""
    import json

    root.call("pool", "fill", "--wait")
    time.sleep(SETTLE_S)
    entries = json.loads(root.output("pool", "ls", "--format", "json"))
    total = sum(pss_kib(e["monitor"]) + pss_kib(e["qemu"]) for e in entries)
    return total / 1024 / max(1, len(entries))
