"""A warm pool VM's monitor until a sandbox claims it: `python -I -m vmrt.monitor.pooled SPEC`.

It boots QEMU exactly as a sandbox monitor would (`vmspec.pod_vm`), waits for
the agent's hello, imports the sandbox monitor's modules, writes `ready.json`,
and then only waits: for QEMU to die (it exits; the next refill reaps the
entry), for SIGTERM (a drain), or for one `adopt` request on its socket. By
then the claimer has renamed this VM's directory to `sandboxes/<sb>`
(`runtime/pool.py`). On `adopt` it joins the sandbox's network namespace (an
fd passed with the request) and becomes that sandbox's monitor in the same
process and interpreter (`vmrt.monitor.__main__.run_spec`): QEMU stays its
child, and QMP, the agent port, the listening socket and the claimer's
connection (where the monitor reports ready) change hands as file descriptors.
Not exec'ing saves the claim an interpreter start and the monitor's imports
(asyncio, QMP): ≈60 ms of a ≈0.4 s pod start.

Two things make the handover lossless: QMP is never read here, so the monitor
gets QEMU's greeting and negotiates itself; and the agent port is read only up
to the hello, after which the guest sends nothing unasked.

Its argv names no sandbox, and never will. `procscan` tells which sandbox it
serves by the log it writes (fd 2, `<vm dir>/monitor.log`), which the claim's
rename moved to `sandboxes/<sb>`: unclaimed, it is no sandbox's (so `gc` leaves
it alone); claimed, it is that sandbox's monitor.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any

from vmrt import config, protocol
from vmrt.errors import VmrtError
from vmrt.ids import validate_id
from vmrt.monitor.adopt import Adoption
from vmrt.monitor.launch import launch
from vmrt.paths import PoolVMDir, Root
from vmrt.state.store import write_json
from vmrt.util.proc import start_time
from vmrt.util.sockets import bind_unix

#: A claimer must send its whole request within this long of connecting.
REQUEST_TIMEOUT_S = 5.0
#: POOL_SCHEDULING: a pool VM is started, boots and idles under SCHED_IDLE (QEMU
#: inherits it): it only gets CPU time nothing else wants, so the refill a pod's create
#: starts does not slow that pod's start (at nice 10 it still cost ≈0.3 s of a ≈0.7 s
#: start here). Once claimed, the monitor and QEMU go back to SCHED_OTHER.
#: How often an idle pool VM checks that its directory still exists.
ORPHAN_CHECK_S = 10.0


class PoolError(Exception):
    pass


def _log(level: str, msg: str, **fields: Any) -> None:
    """A JSON line on stderr: the monitor.log this process was started with, which moves
    with the directory when the VM is claimed (a path would not)."""
    record = {"level": level, "msg": msg, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
    os.write(2, (json.dumps(record, default=str) + "\n").encode())


class PoolVM:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.root = Root.at(spec["root"])
        self.vm_id = validate_id(spec["vm_id"])
        self.dir: PoolVMDir = self.root.pool_vm(self.vm_id)
        self.cfg = config.load(spec.get("config_path"))
        self.qemu: Any = None
        self.spare_qmp: socket.socket | None = None
        self.pidfd = -1

    # --- boot ----------------------------------------------------------------------

    def boot(self) -> None:
        sbdir = self.dir.vm
        launched = launch(
            self.cfg, name=f"pool-{self.vm_id}", kernel=self.spec["kernel"],
            initrd=self.spec["initrd"], kernel_cmdline=tuple(self.spec["kernel_cmdline"]),
            root_image=self.spec["root_image"], accel=self.spec["accel"],
            console_log=sbdir.console_log, qemu_log=sbdir.qemu_log,
            spare_qmp=self.spec["accel"] == "tcg")
        _log("info", "launching qemu", pool_vm=self.vm_id, argv=launched.argv)
        self.spare_qmp = launched.spare_qmp
        self.qemu, self.qmp, self.agent = launched.qemu, launched.qmp, launched.agent
        nonce = launched.nonce
        self.pidfd = os.pidfd_open(self.qemu.pid)
        self.listener = bind_unix(sbdir.monitor_sock)
        self.sock_ino = os.stat(sbdir.monitor_sock).st_ino
        self._wait_hello(nonce, time.monotonic() + self.cfg.boot_timeout_s)
        self._warm_up(time.monotonic() + self.cfg.request_timeout_s * 2)
        # Now, while nobody waits: what a claim would otherwise import on its way.
        import vmrt.monitor.__main__  # noqa: F401
        import vmrt.monitor.main  # noqa: F401

        self._trim_translations()
        me = os.getpid()
        write_json(self.dir.ready, {"qemu": [self.qemu.pid, start_time(self.qemu.pid) or 0],
                                    "monitor": [me, start_time(me) or 0]})
        _log("info", "ready", pool_vm=self.vm_id, qemu=self.qemu.pid)

    def _trim_translations(self) -> None:
        """Give back what the boot left dead of TCG's translation cache, as a sandbox
        monitor does (`monitor/jit_trim.py`), over this VM's own second QMP monitor, which
        is then closed: the main one stays unread for the monitor that adopts the VM.
        Best effort, as the warm-up."""
        spare, self.spare_qmp = self.spare_qmp, None
        if spare is None:
            return
        import asyncio

        from vmrt.monitor.jit_trim import trim_once

        try:
            released = asyncio.run(trim_once(spare, self.qemu.pid))
            _log("info", "trimmed the translation cache", pool_vm=self.vm_id,
                 mib=released >> 20)
        except Exception as exc:  # noqa: BLE001 - an economy, never a reason to fail
            _log("warning", "no trim of the translation cache", pool_vm=self.vm_id,
                 error=str(exc))
        finally:
            spare.close()

    def _wait_hello(self, nonce: str, deadline: float) -> None:
        frame = self._one_frame(deadline, "booting", "say hello")
        hello = frame.json() if frame.type is protocol.FrameType.EVENT else {}
        if hello.get("event") != "hello" or hello.get("nonce") != nonce \
                or hello.get("version") != protocol.VERSION:
            raise PoolError("the guest agent's first message is not this VM's hello")

    def _warm_up(self, deadline: float) -> None:
        """Have the agent run one throwaway container (`vmrt_agent.warmup`): the first
        container of a fresh guest is slow, and this VM can pay for it while it waits.
        Best effort: a guest that cannot is still a good pool VM."""
        self.agent.sendall(protocol.request(1, "warm_up"))
        frame = self._one_frame(deadline, "warming up", "finish warming up")
        if frame.type is not protocol.FrameType.RESPONSE:
            raise PoolError("the guest sent something else than its warm-up's answer")
        resp = protocol.Response.parse(frame.json())
        if resp.ok:
            _log("info", "warmed up", pool_vm=self.vm_id, seconds=resp.result.get("seconds"))
        else:
            _log("warning", "no warm-up", pool_vm=self.vm_id, error=resp.error)

    def _one_frame(self, deadline: float, doing: str, to_do: str) -> protocol.Frame:
        """The agent's next frame, which must come alone: the monitor that adopts this
        VM reads the port afresh, so anything more would be lost (better no pool VM
        than a lossy one). QEMU exiting or the port closing ends the wait."""
        decoder = protocol.Decoder()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PoolError(f"the guest agent did not {to_do} in time")
            ready, _, _ = select.select([self.agent.fileno(), self.pidfd], [], [], left)
            if self.pidfd in ready:
                raise PoolError(f"QEMU exited while {doing} ({self.qemu.poll()})")
            if not ready:
                continue
            data = self.agent.recv(65536)
            if not data:
                raise PoolError("the guest closed the agent port")
            frames = decoder.feed(data)
            if not frames:
                continue
            if len(frames) > 1 or decoder.pending:
                raise PoolError(f"the guest sent more than one message while {doing}")
            return frames[0]

    # --- waiting for a claim -----------------------------------------------------------

    def serve(self) -> int | dict[str, Any]:
        """Until QEMU dies (1) or a sandbox claims this VM (the spec of the sandbox
        monitor this process is to become: its fds are no longer this object's). A VM
        whose directory is gone (its --root removed under it) stops: nobody could claim
        or drain it. A claimer renames the directory, then connects within milliseconds,
        so only a directory missing at two checks in a row counts as gone."""
        missing = 0
        while True:
            ready, _, _ = select.select([self.listener.fileno(), self.pidfd], [], [],
                                        ORPHAN_CHECK_S)
            if self.pidfd in ready:
                _log("warning", "qemu exited", pool_vm=self.vm_id, code=self.qemu.poll())
                return 1
            if not ready:
                missing = 0 if self._still_here() else missing + 1
                if missing >= 2:
                    _log("warning", "the pool VM's directory is gone", pool_vm=self.vm_id)
                    return 1
                continue
            conn, _ = self.listener.accept()
            try:
                handover = self._session(conn)
                if handover is not None:
                    return handover
            except (OSError, protocol.ProtocolError, VmrtError, PoolError) as exc:
                _log("warning", "request refused", pool_vm=self.vm_id, error=str(exc))
                with contextlib.suppress(OSError):
                    conn.sendall((json.dumps({"ok": False, "error": str(exc)}) + "\n").encode())
            conn.close()

    def _still_here(self) -> bool:
        try:
            return os.stat(self.dir.vm.monitor_sock).st_ino == self.sock_ino
        except OSError:
            return False

    def _session(self, conn: socket.socket) -> dict[str, Any] | None:
        conn.settimeout(REQUEST_TIMEOUT_S)
        req, fds = _read_request(conn)
        try:
            if req.op == "ping":
                conn.sendall(protocol.response_ok(req.id, {"pool_vm": self.vm_id}))
                return None
            elif req.op == "adopt":
                return self._adopt(conn, req, fds)
            else:
                raise PoolError(f"a pool VM does not serve {req.op!r}")
        finally:
            for fd in fds:
                os.close(fd)

    def _adopt(self, conn: socket.socket, req: protocol.Request,
               fds: list[int]) -> dict[str, Any]:
        sandbox_id = validate_id(protocol.get_str(req.args, "sandbox_id"))
        target = self.root.sandbox(sandbox_id)
        try:
            moved = os.stat(target.monitor_sock).st_ino == self.sock_ino
        except OSError:
            moved = False
        if not moved:  # the claim is the rename: without it, this VM is nobody's
            raise PoolError(f"this VM was not moved to sandbox {sandbox_id}'s directory")
        _foreground(self.qemu.pid)
        if fds:
            from vmrt.network.netns import setns

            setns(fds[0])  # the monitor lives in the pod's network namespace; QEMU needn't
        conn.settimeout(None)
        spec = {"root": str(self.root.path), "sandbox_id": sandbox_id,
                "name": protocol.get_str(req.args, "name"), "kernel": self.spec["kernel"],
                "initrd": self.spec["initrd"], "kernel_cmdline": self.spec["kernel_cmdline"],
                "root_image": self.spec["root_image"], "accel": self.spec["accel"],
                "config_path": protocol.get_str(req.args, "config_path", default="") or None}
        # From here on the sockets belong to the monitor: detached, so that neither
        # this object nor `serve` closes them.
        adoption = Adoption(self.qemu.pid, self.qmp.detach(), self.agent.detach(),
                            self.listener.detach())
        os.close(self.pidfd)
        self.pidfd = -1
        _log("info", "handed to a sandbox", pool_vm=self.vm_id, sandbox=sandbox_id)
        return {**spec, "ready_fd": conn.detach(), "adopt": adoption.to_json()}

    def stop(self) -> None:
        if self.qemu is not None and self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait()


def _read_request(conn: socket.socket) -> tuple[protocol.Request, list[int]]:
    """One request frame, and the fds (at most one: a network namespace) sent with it."""
    decoder = protocol.Decoder()
    fds: list[int] = []
    while True:
        data, ancdata, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[: len(payload) - len(payload) % got.itemsize])
                fds.extend(got)
        if not data:
            for fd in fds:
                os.close(fd)
            raise protocol.ProtocolError("the claimer closed the connection")
        frames = decoder.feed(data)
        if frames:
            if frames[0].type is not protocol.FrameType.REQUEST:
                raise protocol.ProtocolError("expected a request")
            return protocol.Request.parse(frames[0].json()), fds


def background() -> None:
    """SCHED_IDLE for the calling process and what it starts (see POOL_SCHEDULING)."""
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def _foreground(qemu_pid: int) -> None:
    """Back to the normal scheduling class: this process and every thread of QEMU (the
    policy is per thread on Linux)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{qemu_pid}/task")]
    except OSError:
        tids = []
    for tid in (os.getpid(), *tids):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # a drain: unwinds into stop()


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    background()  # its spawner did already; a pool VM started by hand is one too
    vm = PoolVM(json.loads(sys.argv[1]))
    handover: dict[str, Any] | None = None
    try:
        vm.boot()
        served = vm.serve()
        if isinstance(served, int):
            return served
        handover = served
    except (OSError, VmrtError, PoolError) as exc:
        _log("error", "pool VM failed", pool_vm=vm.vm_id, error=str(exc))
        return 1
    finally:
        if handover is None:
            vm.stop()
    from vmrt.monitor.__main__ import run_spec

    # `vm` (and its Popen of QEMU) stays referenced while the monitor runs: a collected
    # Popen whose child still runs is reaped by the next Popen, behind the monitor's back.
    return run_spec(handover)


if __name__ == "__main__":
    sys.exit(main())
