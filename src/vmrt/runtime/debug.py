"""`debug`: what an operator needs to look inside pod VMs (the design lists manual debugging as a use).

Everything here reads what vmrt already keeps: `sandbox.json` for the VM's
processes, devices and members, checked against the live processes (a dead
QEMU reads as dead, whatever the file says), the log files under the
sandbox's directory, and the monitor's socket for QMP: the monitor owns the
only QMP connection, so a QMP command goes through it, never to QEMU directly.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmrt.errors import InvalidArgumentError, NotFoundError, SandboxError, VmrtError
from vmrt.runtime.context import Context
from vmrt.state.model import Device, ProcessRef, SandboxState

#: Where each log of a pod VM lives, by the name `debug logs --source` takes.
#: "agent" is the agent's lines on the guest console (it logs there: no other
#: channel exists before its port is up).
LOG_SOURCES = ("console", "agent", "qemu", "monitor", "virtiofsd")
AGENT_PREFIX = "vmrt-agent:"
FOLLOW_POLL_S = 0.2

# CSI/OSC sequences and other control bytes: SeaBIOS clears the screen on the
# serial console, and a guest could send anything; the operator's terminal
# must only ever get text.
_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC
    r"|\x1b.?"  # any other escape
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 (but \t and \n), DEL and C1


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    alive: bool

    @classmethod
    def of(cls, ref: ProcessRef | None) -> ProcessInfo | None:
        return None if ref is None else cls(ref.pid, ref.alive())


@dataclass(frozen=True)
class DeviceInfo:
    id: str
    kind: str
    slot: int
    owner: str
    helper: ProcessInfo | None  # virtiofsd

    @classmethod
    def of(cls, dev: Device) -> DeviceInfo:
        return cls(dev.id, dev.kind, dev.slot, dev.owner, ProcessInfo.of(dev.helper))


@dataclass(frozen=True)
class VMInfo:
    id: str
    name: str
    status: str  # running | dead | orphaned (QEMU without its monitor) | starting
    created: str
    accel: str
    vcpus: int
    memory_mib: int
    monitor: ProcessInfo | None
    qemu: ProcessInfo | None
    devices: tuple[DeviceInfo, ...]
    members: tuple[str, ...]
    lazy: bool = False  # booted by a member (no infra container): goes with its last member
    network: str = ""  # "joined <netns path>", "new", "host", or "" before it is known

    def to_json(self) -> dict[str, Any]:
        from vmrt.util.record import asdict

        data: dict[str, Any] = asdict(self)
        return data


def vm_status(monitor: ProcessInfo | None, qemu: ProcessInfo | None) -> str:
    if qemu is None:
        # The monitor records QEMU once the agent said hello; before, the VM is booting.
        return "starting" if monitor is None or monitor.alive else "dead"
    if not qemu.alive:
        return "dead"
    return "running" if monitor is not None and monitor.alive else "orphaned"


def vm_info(state: SandboxState) -> VMInfo:
    monitor, qemu = ProcessInfo.of(state.monitor), ProcessInfo.of(state.qemu)
    net = state.network
    return VMInfo(state.id, state.name, vm_status(monitor, qemu), state.created, state.accel,
                  state.vcpus, state.memory_mib, monitor, qemu,
                  tuple(DeviceInfo.of(d) for d in state.devices), state.members, state.lazy,
                  "" if net is None else " ".join(filter(None, (net.mode, net.path))))


def list_vms(ctx: Context) -> list[VMInfo]:
    out = []
    for sid in ctx.store.sandbox_ids():
        try:
            out.append(vm_info(ctx.store.load_sandbox(sid)))
        except VmrtError:  # deleted while we listed
            continue
    return out


def resolve_sandbox(ctx: Context, name: str) -> str:
    """A sandbox id, or the id of a container whose pod VM is meant (users know those)."""
    from vmrt.ids import validate_id

    validate_id(name)
    if ctx.root.sandbox(name).state.exists():
        return name
    try:
        sandbox_id = ctx.store.load_container(name).sandbox
    except NotFoundError:
        raise NotFoundError(f"no pod VM or container named {name}") from None
    if not sandbox_id:  # a create still choosing (or booting) its pod VM
        raise NotFoundError(f"container {name} has no pod VM yet")
    return sandbox_id


# --- QMP -----------------------------------------------------------------------


def qmp(ctx: Context, name: str, command: str, arguments: dict[str, Any] | None) -> Any:
    """Run one QMP command through the VM's monitor; return QEMU's "return" value."""
    from vmrt.runtime import sandbox as sandboxes

    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,127}", command):
        raise InvalidArgumentError(f"not a QMP command name: {command!r}")
    sandbox_id = resolve_sandbox(ctx, name)
    with sandboxes.monitor(ctx, sandbox_id) as mon:
        result = mon.call("qmp", command=command, arguments=arguments or {})
    return result.get("return")


# --- logs ----------------------------------------------------------------------


def log_paths(ctx: Context, sandbox_id: str) -> dict[str, Path]:
    sbdir = ctx.root.sandbox(sandbox_id)
    return {"console": sbdir.console_log, "agent": sbdir.console_log, "qemu": sbdir.qemu_log,
            "monitor": sbdir.monitor_log, "virtiofsd": sbdir.virtiofsd_log}


def clean(text: str) -> str:
    """Text safe for a terminal: escape sequences and control bytes removed, CRLF folded."""
    return _CONTROL.sub("", text.replace("\r\n", "\n"))


def _agent_line(line: str) -> str | None:
    """The agent's part of a console line (SeaBIOS leaves "Booting from ROM.." unterminated)."""
    at = line.find(AGENT_PREFIX)
    return None if at < 0 else line[at:]


def _select(source: str, text: str) -> str:
    if source != "agent":
        return text
    picked = (_agent_line(line) for line in text.splitlines(keepends=True))
    return "".join(line for line in picked if line is not None)


@dataclass(frozen=True)
class LogText:
    source: str
    path: Path
    text: str  # cleaned
    end: int  # bytes of the file read: where following it starts


def read_logs(ctx: Context, name: str, sources: tuple[str, ...] = LOG_SOURCES,
              tail: int | None = None) -> list[LogText]:
    """Each requested log, cleaned (the last `tail` lines only); missing files read as empty."""
    sandbox_id = resolve_sandbox(ctx, name)
    paths = log_paths(ctx, sandbox_id)
    out = []
    for source in sources:
        try:
            raw = paths[source].read_bytes()
        except FileNotFoundError:
            raw = b""
        text = _select(source, clean(raw.decode(errors="replace")))
        if tail is not None:
            text = "".join(text.splitlines(keepends=True)[-tail:]) if tail > 0 else ""
        out.append(LogText(source, paths[source], text, len(raw)))
    return out


def follow_logs(ctx: Context, name: str, start: dict[str, int]) -> Iterator[tuple[str, str]]:
    """(source, complete cleaned line) as the logs grow past `start`; ends with the VM.

    `start` is where `read_logs` stopped in each file, so no line falls between
    reading and following. Polls the files, as `tail -f` does without inotify:
    the writers (QEMU's chardev, the monitor) know nothing of readers. It
    returns once the sandbox's directory is gone (the VM was deleted).
    """
    import codecs

    sandbox_id = resolve_sandbox(ctx, name)
    sbdir = ctx.root.sandbox(sandbox_id).path
    paths = log_paths(ctx, sandbox_id)
    offsets = dict(start)
    # Per file: a UTF-8 character or a line may straddle two reads.
    decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in start}
    partial = dict.fromkeys(start, "")
    while sbdir.is_dir():
        for source in start:
            chunk, offsets[source] = _read_from(paths[source], offsets[source])
            if not chunk:
                continue
            *lines, partial[source] = (partial[source] + decoders[source].decode(chunk)).split("\n")
            for line in lines:  # cleaned whole: an escape sequence never spans two lines
                picked = _agent_line(clean(line)) if source == "agent" else clean(line)
                if picked is not None:
                    yield source, picked
        time.sleep(FOLLOW_POLL_S)  # a poll interval, not a wait for readiness


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int) -> tuple[bytes, int]:
    try:
        with path.open("rb") as f:
            if f.seek(0, 2) < offset:  # truncated or replaced: start over
                offset = 0
            f.seek(offset)
            data = f.read(1 << 20)
    except FileNotFoundError:
        return b"", 0
    return data, offset + len(data)


# --- console -------------------------------------------------------------------


def require_console(ctx: Context) -> None:
    """The debug console is a root shell in the guest: only where the operator enabled it."""
    if not ctx.config.debug_console:
        raise SandboxError("the debug console is disabled: set debug_console = true in "
                           f"{ctx.config_path or '/etc/vmrt/config.toml'}")


def console(ctx: Context, name: str, term: str) -> int:
    """A shell in the guest on this process's terminal; return its exit status as a shell would.

    The monitor opens a channel to a `/bin/sh` the agent runs outside every
    container; this process then bridges it exactly as a foreground `exec -t`
    does (raw terminal, window size, signals): it is that process's shim.
    """
    from vmrt.monitor.debugging import CONSOLE_OWNER
    from vmrt.runtime import sandbox as sandboxes
    from vmrt.shim.main import ShimSpec, run_foreground

    require_console(ctx)
    sandbox_id = resolve_sandbox(ctx, name)
    with sandboxes.monitor(ctx, sandbox_id) as mon:
        result = mon.call("debug_console", term=term)
    return run_foreground(ShimSpec(CONSOLE_OWNER, int(result["channel"]),
                                   ctx.root.sandbox(sandbox_id).monitor_sock,
                                   foreground=True, local_tty=True))
