"""What vmrt remembers about containers and pod VMs, versioned on disk."""

from __future__ import annotations

import enum

from vmrt.errors import VmrtError
from vmrt.util.record import asdict, field, fields, record

TYPE_CHECKING = False  # typing is not imported at run time: `vmrt state` pays for every import
if TYPE_CHECKING:
    from typing import Any

SCHEMA_VERSION = 1


class Status(enum.Enum):
    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@record
class ProcessRef:
    """A host process named by pid *and* start time, so a recycled pid never passes for it."""

    pid: int
    start_time: int

    def alive(self) -> bool:
        from vmrt.util.proc import start_time

        return self.pid > 0 and start_time(self.pid) == self.start_time


@record
class ContainerState:
    id: str
    bundle: str
    sandbox: str
    role: str
    status: Status
    created: str
    annotations: dict[str, str] = field(default_factory=dict)
    shim: ProcessRef | None = None
    creator: ProcessRef | None = None
    channel: int = 0
    schema: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerState:
        _check_schema(data)
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["status"] = Status(values["status"])
        for key in ("shim", "creator"):
            if values.get(key) is not None:
                values[key] = ProcessRef(**values[key])
        return cls(**values)


@record
class Device:
    """A device the monitor hot-plugged, with what it takes to unplug it."""

    id: str
    kind: str  # "virtiofs" | "blk" | "net"
    slot: int
    owner: str  # the container it belongs to
    helper: ProcessRef | None = None  # virtiofsd


@record
class NetworkRef:
    """The pod's network namespace, and which of its interfaces the VM carries.

    `mode` is "joined" (the spec named `path`), "new" (vmrt made it; the monitor,
    QEMU and the shims in it are all that keep it, so it cannot leak) or "host"
    (the spec asked for none: the VM gets no NIC). `links` are the namespace's
    interfaces whose traffic is redirected into the VM: what `delete` must undo
    when the monitor could not.
    """

    mode: str
    path: str = ""
    links: tuple[str, ...] = ()


@record
class SandboxState:
    id: str
    name: str
    created: str
    accel: str = ""
    vcpus: int = 0
    memory_mib: int = 0
    monitor: ProcessRef | None = None
    qemu: ProcessRef | None = None
    members: tuple[str, ...] = ()
    devices: tuple[Device, ...] = ()
    next_channel: int = 1
    #: Booted by a member, not by an infra container: it goes with its last member.
    lazy: bool = False
    network: NetworkRef | None = None
    schema: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = asdict(self)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxState:
        _check_schema(data)
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("monitor", "qemu"):
            if values.get(key) is not None:
                values[key] = ProcessRef(**values[key])
        values["members"] = tuple(values.get("members", ()))
        values["devices"] = tuple(
            Device(**{**d, "helper": ProcessRef(**d["helper"]) if d.get("helper") else None})
            for d in values.get("devices", ())
        )
        if values.get("network") is not None:
            net = values["network"]
            values["network"] = NetworkRef(**{**net, "links": tuple(net.get("links", ()))})
        return cls(**values)


def _check_schema(data: dict[str, Any]) -> None:
    if data.get("schema") != SCHEMA_VERSION:
        raise VmrtError(f"state written by an incompatible vmrt (schema {data.get('schema')})")
