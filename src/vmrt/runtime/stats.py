"""The guest's raw cgroup v2 figures, shaped as runc's `events` stats (types.Stats).

The agent sends numbers read from the container's cgroup
(`vmrt_agent.cgroups.stats`); this module checks them (the guest is not
trusted to send well-formed data either) and lays them out as runc 1.1 does
for cgroup v2: CPU times in nanoseconds, `memory.max` of "max" as 2^64-1,
swap usage including memory, `memory.events` "max" as the failure count,
io.stat as blkio entries. Network counters are the guest's interfaces (a
container shares its pod VM's network), `lo` left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

UNLIMITED = 2**64 - 1
_MAX_U64 = 2**64 - 1


def _num(table: Any, key: str) -> int:
    """A counter from the guest, or 0; anything but a sane non-negative int counts as 0."""
    if not isinstance(table, Mapping):
        return 0
    value = table.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_U64:
        return value
    return 0


def _limit(table: Mapping[str, Any], key: str) -> int:
    """A limit: an int, or None (no limit) as runc's "unlimited"."""
    if table.get(key) is None:
        return UNLIMITED
    return _num(table, key)


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, Mapping) else {}


def oom_kills(raw: Mapping[str, Any]) -> int:
    return _num(_table(_table(raw, "memory"), "events"), "oom_kill")


def to_runc(raw: Mapping[str, Any]) -> dict[str, Any]:
    """runc's `data` of a `{"type": "stats"}` event, from the agent's figures."""
    cpu = _table(raw, "cpu")
    memory = _table(raw, "memory")
    pids = _table(raw, "pids")
    stats: dict[str, Any] = {
        "cpu": {
            "usage": {"total": _num(cpu, "usage_usec") * 1000,
                      "kernel": _num(cpu, "system_usec") * 1000,
                      "user": _num(cpu, "user_usec") * 1000},
            "throttling": _omit_zero({"periods": _num(cpu, "nr_periods"),
                                      "throttled_periods": _num(cpu, "nr_throttled"),
                                      "throttled_time": _num(cpu, "throttled_usec") * 1000}),
        },
        "memory": _memory(memory),
        "pids": _omit_zero({"current": _num(pids, "current"),
                            "limit": 0 if pids.get("max") is None else _num(pids, "max")}),
        "blkio": _blkio(raw.get("io")),
        "hugetlb": {},
        "intel_rdt": {},
        "network_interfaces": _interfaces(raw.get("net")) or None,
    }
    cpuset = raw.get("cpuset_cpus")
    if isinstance(cpuset, str):
        stats["cpuset"] = {"cpus": _cpu_list(cpuset)}
    return stats


def _memory(memory: Mapping[str, Any]) -> dict[str, Any]:
    stat = {k: v for k, v in _table(memory, "stat").items()
            if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0}
    usage = _num(memory, "current")
    swap_limit = _limit(memory, "swap_max")
    mem_limit = _limit(memory, "max")
    out: dict[str, Any] = {
        "usage": _omit_zero({"limit": mem_limit, "usage": usage, "max": _num(memory, "peak"),
                             "failcnt": _num(_table(memory, "events"), "max")},
                            keep=("limit", "failcnt")),
        "swap": _omit_zero({
            "limit": UNLIMITED if UNLIMITED in (swap_limit, mem_limit) else swap_limit + mem_limit,
            "usage": _num(memory, "swap_current") + usage, "failcnt": 0},
            keep=("limit", "failcnt")),
    }
    if stat.get("file"):
        out["cache"] = stat["file"]
    if stat:
        out["raw"] = stat
    return out


def _blkio(io: Any) -> dict[str, Any]:
    if not isinstance(io, list):
        return {}
    service_bytes: list[dict[str, Any]] = []
    serviced: list[dict[str, Any]] = []
    for device in io:
        if not isinstance(device, Mapping):
            continue
        major, minor = _num(device, "major"), _num(device, "minor")
        for target, keys in ((service_bytes, ("rbytes", "wbytes")), (serviced, ("rios", "wios"))):
            for op, key in zip(("Read", "Write"), keys, strict=True):
                target.append({"major": major, "minor": minor, "op": op,
                               "value": _num(device, key)})
    out: dict[str, Any] = {}
    if service_bytes:
        out["ioServiceBytesRecursive"] = service_bytes
        out["ioServicedRecursive"] = serviced
    return out


_NET_KEYS = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped",
             "tx_bytes", "tx_packets", "tx_errors", "tx_dropped")


def _interfaces(net: Any) -> list[dict[str, Any]]:
    if not isinstance(net, list):
        return []
    out = []
    for iface in net:
        if isinstance(iface, Mapping) and isinstance(iface.get("name"), str):
            out.append({"name": iface["name"][:64], **{k: _num(iface, k) for k in _NET_KEYS}})
    return out


def _cpu_list(text: str) -> list[int]:
    """"0-2,4" -> [0, 1, 2, 4] (bounded: a guest has at most a few hundred vCPUs)."""
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            first, last = int(lo), int(hi or lo)
            cpus.extend(range(first, min(last, first + 1024) + 1))
    return cpus[:1024]


def _omit_zero(entry: dict[str, int], keep: tuple[str, ...] = ()) -> dict[str, int]:
    """Go's `omitempty`: runc leaves zero counters out of these objects."""
    return {k: v for k, v in entry.items() if v or k in keep}
