"""A container's cgroup v2 directory in the guest: its processes, its figures, its OOM kills.

crun puts each container in the cgroup its spec names (the host writes
``linux.cgroupsPath = /vmrt/<id>``), so everything ``ps`` and ``events`` report
is read from files under ``/sys/fs/cgroup/vmrt/<id>/``: the pids from
``cgroup.procs`` (guest pids: the container's processes never exist on the
host), the figures from ``cpu.stat``, ``memory.*``, ``pids.*`` and ``io.stat``.
The figures go to the host raw, as numbers; shaping them like runc's
``events`` JSON is the host's job (``vmrt.runtime.stats``).

The directory outlives the container's processes until ``crun delete``, so the
OOM count of a container that the OOM killer just ended can still be read.
"""

from __future__ import annotations

import json
import os
from typing import Any, Final

from vmrt_agent.errors import AgentError

CGROUP_ROOT: Final = "/sys/fs/cgroup"
#: What the guest's network looks like (the pod's network is the VM's).
NET_DEV: Final = "/proc/net/dev"
#: Bounds on what is read: a container may create many cgroups and processes.
MAX_PIDS: Final = 65536
MAX_DEPTH: Final = 16

Stats = dict[str, Any]


def container_dir(bundle_dir: str, root: str = CGROUP_ROOT) -> str:
    """The cgroup directory crun made for the container, from its config.json.

    Only an absolute ``cgroupsPath`` that stays inside ``root`` is accepted
    (the host writes ``/vmrt/<id>``); anything else is the host's mistake.
    """
    try:
        with open(os.path.join(bundle_dir, "config.json"), "rb") as f:
            spec = json.load(f)
        path = spec["linux"]["cgroupsPath"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AgentError(f"the container's cgroup is unknown: {exc}") from exc
    if not isinstance(path, str) or not path.startswith("/"):
        raise AgentError("the container's cgroupsPath is not an absolute path")
    resolved = os.path.normpath(os.path.join(root, path.lstrip("/")))
    if not resolved.startswith(root.rstrip("/") + "/"):
        raise AgentError("the container's cgroupsPath leaves the cgroup tree")
    return resolved


def pids(cgroup: str) -> list[int]:
    """Every process in the cgroup and its descendants (crun's sub-cgroups too), sorted."""
    found: set[int] = set()
    for directory in _walk(cgroup):
        try:
            with open(os.path.join(directory, "cgroup.procs")) as f:
                for line in f:
                    if line.strip().isdigit():
                        found.add(int(line))
                    if len(found) >= MAX_PIDS:
                        return sorted(found)
        except FileNotFoundError:
            continue  # removed while we walked
    return sorted(found)


def _walk(top: str) -> list[str]:
    out = [top]
    depth = {top: 0}
    index = 0
    while index < len(out):
        here = out[index]
        index += 1
        if depth[here] >= MAX_DEPTH:
            continue
        try:
            entries = os.scandir(here)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    out.append(entry.path)
                    depth[entry.path] = depth[here] + 1
    return out


def stats(cgroup: str, net_dev: str = NET_DEV) -> Stats:
    """Raw figures of the cgroup; a file the kernel does not offer is left out.

    ``memory.max`` and ``pids.max`` of ``max`` (no limit) come out as ``None``.
    """
    if not os.path.isdir(cgroup):
        raise AgentError("the container's cgroup does not exist")
    out: Stats = {}
    cpu = _keyed(os.path.join(cgroup, "cpu.stat"))
    if cpu is not None:
        out["cpu"] = cpu
    memory: Stats = {}
    for key, name in (("current", "memory.current"), ("max", "memory.max"),
                      ("peak", "memory.peak"), ("swap_current", "memory.swap.current"),
                      ("swap_max", "memory.swap.max")):
        value = _single(os.path.join(cgroup, name))
        if value is not _MISSING:
            memory[key] = value
    for key, name in (("stat", "memory.stat"), ("events", "memory.events")):
        table = _keyed(os.path.join(cgroup, name))
        if table is not None:
            memory[key] = table
    if memory:
        out["memory"] = memory
    pids_stats: Stats = {}
    for key, name in (("current", "pids.current"), ("max", "pids.max")):
        value = _single(os.path.join(cgroup, name))
        if value is not _MISSING:
            pids_stats[key] = value
    if pids_stats:
        out["pids"] = pids_stats
    io = _io_stat(os.path.join(cgroup, "io.stat"))
    if io is not None:
        out["io"] = io
    cpuset = _single_text(os.path.join(cgroup, "cpuset.cpus.effective"))
    if cpuset is not None:
        out["cpuset_cpus"] = cpuset
    out["net"] = net_interfaces(net_dev)
    return out


def oom_kills(cgroup: str) -> int:
    """How many processes of the cgroup the OOM killer has killed so far."""
    events = _keyed(os.path.join(cgroup, "memory.events")) or {}
    return int(events.get("oom_kill", 0))


_MISSING: Final = object()


def _single(path: str) -> Any:
    """A one-number file: the int, None for "max", _MISSING when absent or unreadable."""
    text = _single_text(path)
    if text is None:
        return _MISSING
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return _MISSING


def _single_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read(4096).strip()
    except OSError:
        return None


def _keyed(path: str) -> dict[str, int] | None:
    """A ``key value`` per line file (cpu.stat, memory.stat, memory.events)."""
    try:
        with open(path) as f:
            lines = f.read(1 << 16).splitlines()
    except OSError:
        return None
    table: dict[str, int] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            table[key] = int(value)
    return table


def _io_stat(path: str) -> list[dict[str, int]] | None:
    """``MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=..`` per device."""
    try:
        with open(path) as f:
            lines = f.read(1 << 16).splitlines()
    except OSError:
        return None
    devices = []
    for line in lines:
        fields = line.split()
        if not fields:
            continue
        major, _, minor = fields[0].partition(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        entry = {"major": int(major), "minor": int(minor)}
        for field in fields[1:]:
            key, _, value = field.partition("=")
            if value.isdigit():
                entry[key] = int(value)
        devices.append(entry)
    return devices


_NET_FIELDS: Final = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped")
_NET_TX_FIELDS: Final = ("tx_bytes", "tx_packets", "tx_errors", "tx_dropped")


def net_interfaces(net_dev: str = NET_DEV) -> list[dict[str, Any]]:
    """Counters of the guest's interfaces but ``lo`` (containers share the VM's network)."""
    try:
        with open(net_dev) as f:
            lines = f.read(1 << 16).splitlines()[2:]
    except OSError:
        return []
    out: list[dict[str, Any]] = []
    for line in lines:
        name, sep, rest = line.partition(":")
        name = name.strip()
        numbers = rest.split()
        if not sep or name == "lo" or len(numbers) < 12 or not all(n.isdigit() for n in numbers):
            continue
        values = [int(n) for n in numbers]
        entry: dict[str, Any] = {"name": name}
        entry.update(zip(_NET_FIELDS, values[0:4], strict=True))
        entry.update(zip(_NET_TX_FIELDS, values[8:12], strict=True))
        out.append(entry)
    return out
