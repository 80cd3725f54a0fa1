"""Which network namespace a pod VM lives in, and getting processes into it.

The spec decides (`linux.namespaces[type=network]`):

* a `path` (CRI-O, podman, containerd's CRI pass the namespace CNI filled):
  the monitor, QEMU and every shim of the pod join it;
* no path (ocid, `ctr run`, `runc spec`): vmrt makes a new, empty one at
  `create`. The pid in --pid-file (the shim) lives in it, because ocid runs
  CNI on `/proc/<pid>/ns/net` between `create` and `start`. Nothing pins it
  but the processes in it — the monitor, QEMU, the shims — so it goes when
  they go and cannot leak;
* no network namespace at all (podman's `--network host`): a VM cannot share
  the host's stack, so it gets no NIC and its containers see only `lo`.

Everything here is cheap (ctypes on the libc already loaded, /proc reads):
it runs on the CLI path of `create` and `start`. pyroute2 stays in the monitor.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping
from typing import Any

from vmrt.errors import ConfigError, SandboxError
from vmrt.state.model import NetworkRef

CLONE_NEWNET = 0x40000000
JOINED, NEW, HOST = "joined", "new", "host"
#: Taps vmrt makes in the namespace are named so; a scan skips them.
TAP_PREFIX = "vmtap"


@functools.cache
def _libc() -> Any:
    import ctypes  # not at import time: `vmrt state` imports this module and needs no ctypes

    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def requested(raw: Mapping[str, Any]) -> NetworkRef:
    """The network a spec asks for, as a sandbox records it (no inode, no links yet)."""
    linux = raw.get("linux")
    namespaces = linux.get("namespaces", []) if isinstance(linux, dict) else []
    if not isinstance(namespaces, list):
        raise ConfigError("config.json: linux.namespaces must be an array")
    for ns in namespaces:
        if isinstance(ns, dict) and ns.get("type") == "network":
            path = ns.get("path", "")
            if not isinstance(path, str):
                raise ConfigError("config.json: linux.namespaces[].path must be a string")
            return NetworkRef(JOINED, path=path) if path else NetworkRef(NEW)
    return NetworkRef(HOST)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace `fd` refers to."""
    _check(_libc().setns(fd, CLONE_NEWNET), "setns")


def _new_netns() -> int:
    """A new, empty network namespace, as an fd; the caller stays where it was."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc().unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            setns(home)  # a failure here leaves this short-lived CLI call astray; it raises
    finally:
        os.close(home)


@contextlib.contextmanager
def opened(ref: NetworkRef | None) -> Iterator[int | None]:
    """An fd on the namespace `ref` names (made now for NEW), None for HOST; closed after."""
    if ref is None or ref.mode == HOST:
        yield None
        return
    try:
        fd = os.open(ref.path, os.O_RDONLY | os.O_CLOEXEC) if ref.mode == JOINED else _new_netns()
    except OSError as exc:
        what = ref.path or "a new network namespace"
        raise SandboxError(f"cannot open {what}: {exc.strerror or exc}") from exc
    try:
        yield fd
    finally:
        os.close(fd)


def of_process(pid: int) -> str:
    """The path naming `pid`'s network namespace, for a process to join."""
    return f"/proc/{pid}/ns/net"


def interface_names(pid: int) -> set[str]:
    """Names of the interfaces in `pid`'s network namespace, from /proc/<pid>/net/dev.

    A /proc read, not netlink: `start` asks it on every call and must stay cheap.
    """
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return set()
    return {line.split(":", 1)[0].strip() for line in lines if ":" in line}


def uncarried(ref: NetworkRef, pid: int) -> set[str]:
    """Interfaces of the pod's namespace that are not carried into the VM yet."""
    return {name for name in interface_names(pid)
            if name != "lo" and not name.startswith(TAP_PREFIX) and name not in ref.links}
