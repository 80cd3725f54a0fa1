"""`exec`: run another process in a running container, with its own shim.

The process is built as runc builds it: from --process (a process.json,
what conmon and CRI-O pass), or from the container's own process with the
command line, env, cwd, user and capabilities the flags give. With
--detach the shim is forked and its pid written to --pid-file (conmon
reaps it); without, this very process is the shim and exits with the
process's status (CRI-O's streaming exec).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmrt.errors import ConfigError, InvalidArgumentError, SandboxError, StateTransitionError
from vmrt.runtime import sandbox as sandboxes
from vmrt.runtime.console import send_console
from vmrt.runtime.context import Context
from vmrt.state import status
from vmrt.state.model import ContainerState, Status
from vmrt.state.store import atomic_write


@dataclass(frozen=True)
class ExecOptions:
    id: str
    args: tuple[str, ...] = ()
    process_file: str | None = None
    detach: bool = False
    pid_file: str | None = None
    console_socket: str | None = None
    tty: bool = False
    env: tuple[str, ...] = ()
    cwd: str | None = None
    user: str | None = None
    additional_gids: tuple[int, ...] = ()
    caps: tuple[str, ...] = ()
    no_new_privs: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def build_process(state: ContainerState, opts: ExecOptions) -> dict[str, Any]:
    if opts.process_file:
        try:
            process = json.loads(Path(opts.process_file).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read process {opts.process_file}: {exc}") from exc
        if not isinstance(process, dict):
            raise ConfigError("process must be a JSON object")
    else:
        try:
            config = json.loads((Path(state.bundle) / "config.json").read_text())
            process = dict(config.get("process", {}))
        except (OSError, ValueError):
            process = {}
        process["args"] = list(opts.args)
        process["terminal"] = opts.tty
        if opts.env:
            process["env"] = [*process.get("env", []), *opts.env]
        if opts.cwd:
            process["cwd"] = opts.cwd
        if opts.user:
            uid, _, gid = opts.user.partition(":")
            if not uid.isdigit() or (gid and not gid.isdigit()):
                raise InvalidArgumentError(f"invalid user {opts.user!r}: want uid[:gid]")
            process["user"] = {**process.get("user", {}), "uid": int(uid),
                               **({"gid": int(gid)} if gid else {})}
        if opts.additional_gids:
            process.setdefault("user", {})["additionalGids"] = list(opts.additional_gids)
        if opts.caps:
            caps = dict(process.get("capabilities", {}))
            for kind in ("bounding", "effective", "permitted", "inheritable", "ambient"):
                if kind in caps or kind in ("bounding", "effective", "permitted"):
                    caps[kind] = sorted({*caps.get(kind, []), *opts.caps})
            process["capabilities"] = caps
        if opts.no_new_privs:
            process["noNewPrivileges"] = True
    args = process.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise ConfigError("args must not be empty")
    process.pop("apparmorProfile", None)
    process.pop("selinuxLabel", None)
    _check_executable(state, args[0], process.get("env", []))
    return process


def _check_executable(state: ContainerState, exe: str, env: list[str]) -> None:
    """As at create: runc reports a missing program before anything runs."""
    from vmrt.util.rootpath import find_executable

    try:
        root = json.loads((Path(state.bundle) / "config.json").read_text())["root"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # the bundle is gone; the guest's crun will say it
    rootfs = root if os.path.isabs(root) else os.path.join(state.bundle, root)
    if os.path.isdir(rootfs) and find_executable(rootfs, exe, list(env)) is None:
        raise ConfigError(f'unable to start container process: exec: "{exe}": '
                          "executable file not found in $PATH" if "/" not in exe else
                          f'unable to start container process: exec: "{exe}": '
                          f"stat {exe}: no such file or directory")


def exec_process(ctx: Context, opts: ExecOptions) -> int:
    """Start the process. Detached: return 0 once its shim runs. Else: its exit code."""
    from vmrt.shim.main import ShimSpec, run_foreground, spawn

    state = ctx.store.load_container(opts.id)
    current = status.current(state)
    if current is Status.STOPPED:
        raise StateTransitionError("cannot exec in a stopped container")
    if current is Status.PAUSED:
        raise StateTransitionError("cannot exec in a paused container")
    process = build_process(state, opts)
    terminal = bool(process.get("terminal", False))
    if terminal and opts.detach and not opts.console_socket:
        raise InvalidArgumentError(
            "cannot allocate tty if runc will detach without setting console socket")
    with sandboxes.monitor(ctx, state.sandbox) as mon:
        result = mon.call("exec_process", id=opts.id, process=process, terminal=terminal)
    channel = int(result["channel"])
    sock = ctx.root.sandbox(state.sandbox).monitor_sock
    tty_fd = send_console(opts.console_socket) if terminal and opts.console_socket else None
    spec = ShimSpec(opts.id, channel, sock, tty_fd, foreground=not opts.detach,
                    local_tty=terminal and tty_fd is None)
    try:
        if not opts.detach:
            return run_foreground(spec)
        try:
            pid = spawn(spec)
        except OSError as exc:
            raise SandboxError(f"cannot start the exec's shim: {exc}") from exc
    finally:
        if tty_fd is not None:
            os.close(tty_fd)
    if opts.pid_file:
        atomic_write(Path(os.path.abspath(opts.pid_file)), str(pid).encode(), 0o644)
    return 0
