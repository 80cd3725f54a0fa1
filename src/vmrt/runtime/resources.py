"""A container's cgroup limits (OCI `linux.resources`), parsed once into a frozen value.

Two doors lead here: `update`'s flags or its `--resources` document (runc's
format, which is the OCI one; CRI-O pipes it on stdin, podman passes a file),
and a bundle's `linux.resources` at create. What crun in the guest applies is
`to_oci()`: only the fields given, so `update --memory` leaves the CPU limits
alone. What the VM must grow by is `demand()`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from vmrt.errors import InvalidArgumentError
from vmrt.util.record import fields, record

_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)


@record
class Resources:
    memory_limit: int | None = None
    memory_reservation: int | None = None
    memory_swap: int | None = None
    cpu_shares: int | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    cpu_rt_runtime: int | None = None
    cpu_rt_period: int | None = None
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    pids_limit: int | None = None
    blkio_weight: int | None = None
    #: cgroup v2 files by name (OCI `unified`), passed through to crun.
    unified: tuple[tuple[str, str], ...] = ()

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) in (None, ()) for f in fields(self))

    def to_oci(self) -> dict[str, Any]:
        """The OCI LinuxResources document holding exactly the fields that are set."""
        doc: dict[str, Any] = {}
        for section, key, value in _layout(self):
            if value is not None:
                doc.setdefault(section, {})[key] = value
        if self.unified:
            doc["unified"] = dict(self.unified)
        return doc

    def demand(self) -> tuple[float | None, int | None]:
        """(CPUs, MiB) this asks of the VM; None where it says nothing about it.

        CPUs are quota / period (runc's default period is 100 ms); a memory limit
        of -1 (or 0, or none) asks for nothing.
        """
        cpus: float | None = None
        if self.cpu_quota is not None:
            period = self.cpu_period or 100_000
            cpus = self.cpu_quota / period if self.cpu_quota > 0 else 0.0
        memory: int | None = None
        if self.memory_limit is not None:
            memory = math.ceil(self.memory_limit / (1 << 20)) if self.memory_limit > 0 else 0
        return cpus, memory


def _layout(r: Resources) -> list[tuple[str, str, Any]]:
    return [
        ("memory", "limit", r.memory_limit), ("memory", "reservation", r.memory_reservation),
        ("memory", "swap", r.memory_swap),
        ("cpu", "shares", r.cpu_shares), ("cpu", "quota", r.cpu_quota),
        ("cpu", "period", r.cpu_period), ("cpu", "realtimeRuntime", r.cpu_rt_runtime),
        ("cpu", "realtimePeriod", r.cpu_rt_period), ("cpu", "cpus", r.cpuset_cpus),
        ("cpu", "mems", r.cpuset_mems),
        ("pids", "limit", r.pids_limit), ("blockIO", "weight", r.blkio_weight),
    ]


# --- from a document (update --resources, or a spec's linux.resources) -----------------

def from_document(doc: Any, what: str = "resources") -> Resources:
    """Parse an OCI LinuxResources object; unknown members are ignored, as runc does."""
    if not isinstance(doc, Mapping):
        raise InvalidArgumentError(f"{what} must be a JSON object")
    values: dict[str, Any] = {}
    for section, key, attr, kind, (lo, hi) in _DOC_FIELDS:
        part = doc.get(section)
        if part is None:
            continue
        if not isinstance(part, Mapping):
            raise InvalidArgumentError(f"{what}.{section} must be an object")
        value = part.get(key)
        if value is None:
            continue
        if kind is str:
            if not isinstance(value, str):
                raise InvalidArgumentError(f"{what}.{section}.{key} must be a string")
        elif isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise InvalidArgumentError(f"{what}.{section}.{key} must be an integer")
        values[attr] = value
    unified = doc.get("unified")
    if unified is not None:
        if not isinstance(unified, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in unified.items()):
            raise InvalidArgumentError(f"{what}.unified must map file names to strings")
        values["unified"] = tuple(sorted(unified.items()))
    return Resources(**values)


_DOC_FIELDS: tuple[tuple[str, str, str, type, tuple[int, int]], ...] = (
    ("memory", "limit", "memory_limit", int, _INT64),
    ("memory", "reservation", "memory_reservation", int, _INT64),
    ("memory", "swap", "memory_swap", int, _INT64),
    ("cpu", "shares", "cpu_shares", int, _UINT64),
    ("cpu", "quota", "cpu_quota", int, _INT64),
    ("cpu", "period", "cpu_period", int, _UINT64),
    ("cpu", "realtimeRuntime", "cpu_rt_runtime", int, _INT64),
    ("cpu", "realtimePeriod", "cpu_rt_period", int, _UINT64),
    ("cpu", "cpus", "cpuset_cpus", str, (0, 0)),
    ("cpu", "mems", "cpuset_mems", str, (0, 0)),
    ("pids", "limit", "pids_limit", int, _INT64),
    ("blockIO", "weight", "blkio_weight", int, (0, 65535)),
)


def from_json_text(text: str | bytes) -> Resources:
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"invalid resources document: {exc}") from None
    return from_document(doc)


def from_spec(spec: Mapping[str, Any]) -> Resources:
    linux = spec.get("linux")
    if not isinstance(linux, Mapping) or linux.get("resources") is None:
        return Resources()
    return from_document(linux["resources"], "linux.resources")


# --- from runc's update flags --------------------------------------------------------------

_SIZE = re.compile(r"(\d+(?:\.\d+)?) ?([kmgtp])?i?b?", re.IGNORECASE)
_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def ram_in_bytes(flag: str, text: str) -> int:
    """docker's units.RAMInBytes, as runc applies it to memory flags ("-1": unlimited)."""
    if text == "-1":
        return -1
    match = _SIZE.fullmatch(text)
    if match is None:
        raise InvalidArgumentError(f"invalid value for {flag}: invalid size: '{text}'")
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _UNITS[unit])


def parse_int(flag: str, text: str, *, unsigned: bool = False) -> int:
    """strconv.ParseInt / ParseUint, with runc's error text."""
    func = "ParseUint" if unsigned else "ParseInt"
    lo, hi = _UINT64 if unsigned else _INT64
    if not re.fullmatch(r"[+-]?\d+" if not unsigned else r"\+?\d+", text):
        raise InvalidArgumentError(
            f'invalid value for {flag}: strconv.{func}: parsing "{text}": invalid syntax')
    value = int(text)
    if not lo <= value <= hi:
        raise InvalidArgumentError(
            f'invalid value for {flag}: strconv.{func}: parsing "{text}": value out of range')
    return value


def from_flags(flags: Mapping[str, str | None]) -> Resources:
    """runc's update flags (click's names: `cpu_quota` for --cpu-quota), as runc parses them."""
    if flags.get("l3_cache_schema") or flags.get("mem_bw_schema"):
        raise InvalidArgumentError("Intel RDT is not available in a vmrt guest")
    values: dict[str, Any] = {}
    for name, attr in (("memory", "memory_limit"), ("memory_reservation", "memory_reservation"),
                       ("memory_swap", "memory_swap")):
        text = flags.get(name)
        if text is not None:
            values[attr] = ram_in_bytes(name.replace("_", "-"), text)
    for name, attr, unsigned in (("cpu_quota", "cpu_quota", False),
                                 ("cpu_period", "cpu_period", True),
                                 ("cpu_share", "cpu_shares", True),
                                 ("cpu_rt_runtime", "cpu_rt_runtime", False),
                                 ("cpu_rt_period", "cpu_rt_period", True)):
        text = flags.get(name)
        if text is not None:
            values[attr] = parse_int(name.replace("_", "-"), text, unsigned=unsigned)
    for name, (lo, hi) in (("pids_limit", _INT64), ("blkio_weight", (0, 65535))):
        text = flags.get(name)
        if text is not None:  # urfave/cli's own int flags: its text, not runc's
            if not re.fullmatch(r"-?\d+", text) or not lo <= int(text) <= hi:
                raise InvalidArgumentError(
                    f'invalid value "{text}" for flag -{name.replace("_", "-")}: parse error')
            values[name] = int(text)
    for name in ("cpuset_cpus", "cpuset_mems"):
        if flags.get(name) is not None:
            values[name] = flags[name]
    return Resources(**values)
