"""The bench's workspace: a private /tmp directory, vmrt roots in it, and a cleanup that
leaves nothing behind, whatever failed.

Everything the bench starts carries the lab's directory in its argv (a monitor's
JSON names its --root, QEMU its console log, virtiofsd its share, a shim the
`--root` of the `create` that forked it, runc its --root), so the last step of
`close()` can find and kill every straggler by that path alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VMRT = str(Path(sys.executable).with_name("vmrt"))
RUNC = shutil.which("runc") or "/usr/sbin/runc"
#: One CLI call: a `create` that boots a VM while dozens of others idle is slow under TCG.
CALL_TIMEOUT_S = 300.0

SANDBOX = {"io.kubernetes.cri-o.ContainerType": "sandbox"}


def member_of(pod: str) -> dict[str, str]:
    return {"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": pod}


class CallError(RuntimeError):
    pass


class Lab:
    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vb", dir="/tmp"))
        self.settings = dict(settings or {})  # config values every root of the run gets
        self.roots: list[Path] = []
        self._bundles: dict[tuple[str, ...], Path] = {}
        self._seq = 0

    # --- names, files ---------------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}{self._seq}"

    def root(self, name: str, config: dict[str, Any] | None = None) -> Root:
        path = self.dir / name
        self.roots.append(path)
        cfg_path = None
        values = {**self.settings, **(config or {})}
        if values:
            cfg_path = self.dir / f"{name}.toml"
            cfg_path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in values.items()))
        return Root(self, path, cfg_path)

    def bundle(self, args: list[str], annotations: dict[str, str] | None = None) -> Path:
        """An OCI bundle of a busybox rootfs running `args` (cached by args + annotations)."""
        key = (*args, "|", *sorted(f"{k}={v}" for k, v in (annotations or {}).items()))
        if key not in self._bundles:
            sys.path.insert(0, str(REPO / "src"))
            from vmrt.demo import make_bundle

            path = self.dir / f"bundle{len(self._bundles)}"
            self._bundles[key] = make_bundle(path, args, annotations=annotations)
        return self._bundles[key]

    # --- cleanup ----------------------------------------------------------------------

    def close(self) -> list[str]:
        """Delete every container of every root, drain every pool, then kill whatever
        still names the lab; unmount and remove the lab. Returns what had to be killed."""
        for root in self.roots:
            if not root.is_dir():
                continue
            r = Root(self, root, _config_of(self.dir, root))
            with contextlib.suppress(Exception):
                for cid in r.ids():
                    r.call("delete", "--force", cid, check=False, timeout=120)
            with contextlib.suppress(Exception):
                r.call("pool", "drain", check=False, timeout=120)
        runc_root = self.dir / "runc"
        if runc_root.is_dir():
            with contextlib.suppress(Exception):
                out = subprocess.run([RUNC, "--root", str(runc_root), "list", "-q"],
                                     capture_output=True, text=True, timeout=30,
                                     check=False).stdout
                for cid in out.split():
                    subprocess.run([RUNC, "--root", str(runc_root), "delete", "-f", cid],
                                   capture_output=True, timeout=30, check=False)
        killed = kill_mentioning(str(self.dir))
        from vmrt.util.mount import mounts_under

        for mnt in sorted(mounts_under(self.dir), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", mnt], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        return killed


class Root:
    """One vmrt --root (and its config file) in the lab."""

    def __init__(self, lab: Lab, path: Path, config: Path | None) -> None:
        self.lab = lab
        self.path = path
        self.config = config

    @property
    def argv(self) -> list[str]:
        base = [VMRT, "--root", str(self.path)]
        return [*base, "--config", str(self.config)] if self.config else base

    def call(self, *args: str, check: bool = True, timeout: float = CALL_TIMEOUT_S,
             stdout: int | None = None) -> int:
        """A CLI call; its stderr goes to a file (a detached shim would hold a pipe open)."""
        with tempfile.TemporaryFile() as err:
            code = run(
                [*self.argv, *args], timeout=timeout,
                stdout=subprocess.DEVNULL if stdout is None else stdout, stderr=err.fileno())
            if check and code != 0:
                err.seek(0)
                raise CallError(f"vmrt {' '.join(args)}: exit {code}: "
                                f"{err.read().decode(errors='replace').strip()[-800:]}")
        return code

    def output(self, *args: str, timeout: float = CALL_TIMEOUT_S) -> str:
        with tempfile.TemporaryFile() as out:
            self.call(*args, stdout=out.fileno(), timeout=timeout)
            out.seek(0)
            return out.read().decode()

    def ids(self) -> list[str]:
        return self.output("list", "-q", timeout=60).split()

    def sandbox_state(self, sandbox_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.path / "sandboxes" / sandbox_id / "sandbox.json").read_text())
        return data

    def start_until_output(self, bundle: Path, cid: str, *, token: bytes = b"ready",
                           timeout: float = CALL_TIMEOUT_S) -> float:
        """`create` + `start`; seconds until the container's program wrote `token` on its
        stdout (the pipe `create` inherits, which the shim feeds from the guest)."""
        rfd, wfd = os.pipe()
        try:
            t0 = time.perf_counter()
            try:
                self.call("create", "--bundle", str(bundle), cid, stdout=wfd, timeout=timeout)
            finally:
                os.close(wfd)
            self.call("start", cid, timeout=timeout)
            wait_for_output(rfd, token, t0 + timeout)
            return time.perf_counter() - t0
        finally:
            os.close(rfd)

    def delete(self, cid: str) -> None:
        self.call("delete", "--force", cid, timeout=120)


def run(argv: list[str], *, timeout: float, stdout: int = subprocess.DEVNULL,
        stderr: int = subprocess.DEVNULL) -> int:
    """Run to completion; the exit status. Not subprocess.run(timeout=...): with a
    timeout it polls the child with sleeps of up to 50 ms, which would be measured too.
    A blocking wait, and a timer that kills a call that hangs."""
    import threading

    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, expire)
    timer.start()
    try:
        code = proc.wait()
    finally:
        timer.cancel()
    if expired.is_set():
        raise CallError(f"{' '.join(argv[:6])} ... did not finish within {timeout:g} s")
    return code


def wait_for_output(fd: int, token: bytes, deadline: float) -> None:
    seen = b""
    while token not in seen:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise CallError(f"no {token!r} from the container in time (got {seen[-200:]!r})")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise CallError(f"the container's stdout closed before {token!r} ({seen[-200:]!r})")
            seen += chunk


def _config_of(lab_dir: Path, root: Path) -> Path | None:
    path = lab_dir / f"{root.name}.toml"
    return path if path.is_file() else None


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value))


# --- processes and mounts ---------------------------------------------------------------


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def pids_mentioning(marker: str) -> list[int]:
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc")
            if p.isdigit() and int(p) != me and marker in cmdline(int(p))]


def kill_mentioning(marker: str) -> list[str]:
    found = pids_mentioning(marker)
    killed = [f"{pid} {cmdline(pid)[:120]}" for pid in found]
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pids_mentioning(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return killed


