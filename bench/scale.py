"""Scale and churn.

* scale: pods are added one by one; each cold start is timed while the others
  idle (the plot: start time against N), and after each the newest and the
  oldest pod must answer `vmrt exec ... true` within EXEC_BOUND_S (every
  CHECK_EVERY pods: all of them). It stops at `limit` pods, when one answers too
  slowly, or when the host's MemAvailable would drop under MEM_RESERVE_MIB.
  `idle_pods_max` is the count at which every check still passed.
* churn: pods created (`run --detach`) and deleted (`delete --force`) back to
  back for a while; pods per minute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lab import CallError, Lab, Root
from pods import pod_bundle
from stats import Figure

EXEC_BOUND_S = 2.0
CHECK_EVERY = 10
MEM_RESERVE_MIB = 3072


@dataclass
class ScaleResult:
    cold_start: list[tuple[int, float]] = field(default_factory=list)
    exec_worst: list[tuple[int, float]] = field(default_factory=list)
    idle_pods_max: int = 0
    stopped_by: str = ""


def mem_available_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def exec_latency(root: Root, cid: str) -> float:
    t0 = time.perf_counter()
    try:
        root.call("exec", cid, "true", timeout=60)
    except (CallError, TimeoutError):
        return float("inf")
    return time.perf_counter() - t0


def scale(lab: Lab, root: Root, *, plot_up_to: int, limit: int,
          progress: bool = True) -> ScaleResult:
    result = ScaleResult()
    bundle = pod_bundle(lab)
    pods: list[str] = []
    per_pod_mib = 0.0
    while len(pods) < limit:
        before = mem_available_mib()
        if before - max(per_pod_mib, 256.0) < MEM_RESERVE_MIB:
            result.stopped_by = f"memory (MemAvailable {before:.0f} MiB)"
            break
        cid = lab.new_id("scale")
        t = root.start_until_output(bundle, cid)
        pods.append(cid)
        n = len(pods)
        per_pod_mib = max(per_pod_mib, before - mem_available_mib())
        if n <= plot_up_to:
            result.cold_start.append((n, t))
        checked = pods if n % CHECK_EVERY == 0 else list(dict.fromkeys([pods[-1], pods[0]]))
        worst = max(exec_latency(root, c) for c in checked)
        result.exec_worst.append((n, worst))
        if progress:
            print(f"  scale: pod {n}: cold start {t:.2f} s, slowest exec of {len(checked)} "
                  f"{worst:.2f} s, MemAvailable {mem_available_mib():.0f} MiB", flush=True)
        if worst > EXEC_BOUND_S:
            result.stopped_by = f"exec took {worst:.2f} s at {n} pods"
            break
        result.idle_pods_max = n
    else:
        result.stopped_by = f"the limit of {limit} pods"
    for cid in pods:
        root.delete(cid)
    return result


def churn(lab: Lab, root: Root, seconds: float) -> tuple[float, Figure]:
    """(pods per minute, the time of one create+delete cycle)."""
    bundle = pod_bundle(lab)
    cycles = Figure(note="one `run --detach` + `delete --force` of a pod")
    t_end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < t_end:
        c0 = time.perf_counter()
        cid = lab.new_id("churn")
        root.call("run", "--detach", "--bundle", str(bundle), cid)
        root.delete(cid)
        cycles.samples.append(time.perf_counter() - c0)
    elapsed = time.perf_counter() - t0
    return len(cycles.samples) / elapsed * 60.0, cycles
