"""Find vmrt's host processes by what they carry in /proc, not by what state says.

State can be gone (removed by hand, a reboot cleared a tmpfs --root while a
process survived elsewhere) or not yet written (a `create` killed while its VM
booted leaves a monitor that no sandbox.json names). Each kind carries its
--root and sandbox in its own argv:

* monitor: ``python -I -m vmrt.monitor '{"root": ..., "sandbox_id": ...}'``
* QEMU: ``-chardev file,id=console,path=<root>/sandboxes/<sb>/console.log``
* a warm pool VM's monitor and QEMU (``-m vmrt.monitor.pooled``, ``path=<root>/pool/<vm>/...``)
  name no sandbox in their argv: a claim renames the VM's directory to the
  sandbox's, and the files they hold open moved with it — the monitor's log on
  its fd 2, QEMU's console log. Unclaimed, they are no sandbox's.
* virtiofsd (and its sandboxed child): ``-o source=<root>/sandboxes/<sb>/shares/<id>``
* shim: comm ``vmrt-shim``; argv is the `create`/`run` that forked it (``--root R``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from vmrt.paths import DEFAULT_ROOT
from vmrt.state.model import ProcessRef
from vmrt.util.record import record

SHIM_COMM = "vmrt-shim"


@record
class VmrtProcess:
    kind: str  # "monitor" | "qemu" | "virtiofsd" | "shim"
    pid: int
    start_time: int
    ppid: int
    root: Path
    sandbox: str = ""  # empty for a shim

    @property
    def ref(self) -> ProcessRef:
        return ProcessRef(self.pid, self.start_time)

    def __str__(self) -> str:
        where = f" sandbox={self.sandbox}" if self.sandbox else ""
        return f"{self.kind} pid={self.pid}{where}"


def _stat(pid: int) -> tuple[str, int, int, str] | None:
    """(state, ppid, start time, comm) from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    comm = data[data.find(b"(") + 1 : data.rfind(b")")].decode(errors="replace")
    rest = data[data.rfind(b")") + 2 :].split()
    return rest[0].decode(), int(rest[1]), int(rest[19]), comm


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="surrogateescape") for a in raw.split(b"\0")[:-1]]


def _under_sandboxes(path: str) -> tuple[Path, str] | None:
    """(root, sandbox) for a path <root>/sandboxes/<sb>/..., else None."""
    parts = Path(path).parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "sandboxes":
            return Path(*parts[:i]), parts[i + 1]
    return None


def _spec_arg(argv: list[str], module: str) -> dict[str, object] | None:
    """The JSON argument after `-m module`."""
    if module not in argv:
        return None
    try:
        spec = json.loads(argv[argv.index(module) + 1])
    except (IndexError, ValueError):
        return None
    return spec if isinstance(spec, dict) else None


def _monitor(argv: list[str]) -> tuple[Path, str] | None:
    spec = _spec_arg(argv, "vmrt.monitor")
    if spec is None or "root" not in spec or "sandbox_id" not in spec:
        return None
    return Path(str(spec["root"])), str(spec["sandbox_id"])


def _pooled(pid: int, argv: list[str]) -> tuple[Path, str] | None:
    """A pool VM's monitor, claimed: the sandbox its log (fd 2) moved to."""
    spec = _spec_arg(argv, "vmrt.monitor.pooled")
    if spec is None or "root" not in spec:
        return None
    sandbox = _moved_to(pid, ["2"], "monitor.log")
    return (Path(str(spec["root"])), sandbox) if sandbox else None


def _console_path(argv: list[str]) -> str | None:
    for arg in argv:
        if arg.startswith("file,id=console,path="):
            # opt() doubled the commas of the path; it is the last key.
            return arg.split("path=", 1)[1].replace(",,", ",")
    return None


def _qemu(argv: list[str]) -> tuple[Path, str] | None:
    path = _console_path(argv)
    return _under_sandboxes(path) if path is not None else None


def _pool_qemu(pid: int, argv: list[str]) -> tuple[Path, str] | None:
    """A pool VM's QEMU, claimed: the sandbox its console log moved to."""
    path = _console_path(argv)
    parts = Path(path).parts if path is not None else ()
    if len(parts) < 4 or parts[-3] != "pool":
        return None
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    sandbox = _moved_to(pid, fds, parts[-1])
    return (Path(*parts[:-3]), sandbox) if sandbox else None


def _moved_to(pid: int, fds: list[str], name: str) -> str:
    """The sandbox whose directory holds the file `name` open on one of `fds`, read from
    where the file is now (a file removed with its directory still says where it was)."""
    for fd in fds:
        try:
            parts = Path(os.readlink(f"/proc/{pid}/fd/{fd}").removesuffix(" (deleted)")).parts
        except OSError:
            continue
        if len(parts) >= 4 and parts[-1] == name and parts[-3] == "sandboxes":
            return parts[-2]
    return ""


def _virtiofsd(argv: list[str]) -> tuple[Path, str] | None:
    for arg in argv:
        if arg.startswith("source="):  # escaped by monitor.shares.fuse_opt
            return _under_sandboxes(re.sub(r"\\(.)", r"\1", arg[len("source="):]))
    return None


def _shim_root(pid: int, argv: list[str]) -> Path:
    root = DEFAULT_ROOT
    for i, arg in enumerate(argv):
        if arg == "--root" and i + 1 < len(argv):
            root = argv[i + 1]
        elif arg.startswith("--root="):
            root = arg[len("--root="):]
    if not os.path.isabs(root):
        with contextlib.suppress(OSError):
            root = os.path.join(os.readlink(f"/proc/{pid}/cwd"), root)
    return Path(os.path.normpath(root))


def _classify(pid: int) -> VmrtProcess | None:
    stat = _stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return None
    _, ppid, start, comm = stat
    argv = _argv(pid)
    if not argv:
        return None  # a kernel thread, or gone
    exe = os.path.basename(argv[0])
    found: tuple[Path, str] | None
    if comm == SHIM_COMM:
        return VmrtProcess("shim", pid, start, ppid, _shim_root(pid, argv))
    if exe.startswith("qemu-system"):
        kind, found = "qemu", _qemu(argv) or _pool_qemu(pid, argv)
    elif exe == "virtiofsd":
        kind, found = "virtiofsd", _virtiofsd(argv)
    elif "python" in exe:
        kind, found = "monitor", _monitor(argv) or _pooled(pid, argv)
    else:
        return None
    if found is None:
        return None
    return VmrtProcess(kind, pid, start, ppid, found[0], found[1])


def scan(root: Path | None = None) -> list[VmrtProcess]:
    """Every live vmrt process on the host (of `root` only, if given)."""
    out = []
    for p in _pids():
        proc = _classify(p)
        if proc is not None and (root is None or proc.root == root):
            out.append(proc)
    return out


def of_sandbox(root: Path, sandbox_id: str) -> list[VmrtProcess]:
    """The monitor, QEMU and virtiofsd processes that name this sandbox."""
    return [p for p in scan(root) if p.sandbox == sandbox_id]


def _pids() -> Iterator[int]:
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            yield int(entry)
