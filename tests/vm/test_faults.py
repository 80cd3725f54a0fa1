"""Fault injection: each part of a container's machinery dies at each step of its life.

Components: QEMU, the sandbox monitor, the container's shim and its virtiofsd are
SIGKILLed from the host. The agent is killed from inside the guest: it is PID 1, so
the kernel delivers it no signal it has no handler for (SIGKILL included), but
Python's SIGINT handler is one; a container without a pid namespace (the guest's
own) sends `kill -INT 1`, the agent's loop dies of KeyboardInterrupt, and its fatal
path powers the VM off, as any death of PID 1 ends the guest (with CAP_SYS_BOOT,
`reboot -f` follows, should the agent ever learn to ignore SIGINT).

Steps: after `create`, after `start`, and during `delete --force` (the monitor is
SIGSTOPped first, so that `delete` is stuck in its first call to it while the fault
is injected; then the monitor is let go, or was the victim).

After every fault: the client (tests/helpers/subreaper.py, which plays conmon)
sees an exit status instead of hanging; `state` says `stopped` (or the container
is gone) within a bounded wait; `delete --force` succeeds and leaves no state, no
process and no mount (the `runtime` fixture checks the process table too).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.procs import pid_alive, wait_gone, wait_until
from helpers.reaper_client import SubreaperRun
from helpers.rootfs import make_spec
from helpers.runtime import Runtime, single_line

pytestmark = pytest.mark.vm

COMPONENTS = ["qemu", "monitor", "shim", "virtiofsd", "agent"]
STEPS = ["created", "running", "deleting"]

STATE_BOUND_S = 15.0  # generous under TCG on a shared 2-core machine; measured ≈1 s
POD_TYPE = "io.kubernetes.cri-o.ContainerType"
POD_SANDBOX = "io.kubernetes.cri-o.SandboxID"
TRIGGER = "crash-now"
# Waits for the host to drop /crash-now into its rootfs, then ends the guest from inside.
KILL_AGENT = ["sh", "-c", f"while [ ! -e /{TRIGGER} ]; do sleep 0.1; done; "
              "kill -INT 1; sleep 3; reboot -f; sleep 100"]
# The guest's own pid namespace, CAP_KILL (runc's default) and CAP_SYS_BOOT.
GUEST_NAMESPACES = ["network", "ipc", "uts", "mount"]


def _agent_killer_spec(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    spec = make_spec(KILL_AGENT, namespaces=GUEST_NAMESPACES, annotations=annotations)
    for caps in spec["process"]["capabilities"].values():
        caps.append("CAP_SYS_BOOT")
    return spec


def _write_bundle(bundle, args: list[str], spec: dict[str, Any] | None = None) -> Path:
    b = bundle(args)
    if spec is not None:
        (b / "config.json").write_text(json.dumps(spec))
    return b


def _sandbox(rt: Runtime, sandbox_id: str) -> dict[str, Any]:
    return json.loads((rt.root / "sandboxes" / sandbox_id / "sandbox.json").read_text())


def _pids(rt: Runtime, sandbox_id: str) -> dict[str, int]:
    sb = _sandbox(rt, sandbox_id)
    out = {"monitor": sb["monitor"]["pid"], "qemu": sb["qemu"]["pid"]}
    helpers = [d["helper"]["pid"] for d in sb["devices"] if d.get("helper")]
    out["virtiofsd"] = helpers[0]
    return out


def _wait_blocked_in_poll(pid: int, timeout: float) -> bool:
    """True once `pid` sleeps in poll(2): the CLI waiting for the monitor's answer."""
    def blocked() -> bool:
        try:
            return Path(f"/proc/{pid}/syscall").read_text().split()[0] in ("7", "271")
        except (OSError, IndexError):
            return False

    return wait_until(blocked, timeout, interval=0.02)


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


class Case:
    """One container under test (and, for the agent after create, a pod sibling)."""

    def __init__(self, rt: Runtime, bundle, cid: str, component: str, step: str,
                 tmp: Path) -> None:
        self.rt, self.cid, self.component, self.step, self.tmp = rt, cid, component, step, tmp
        self.sibling: str | None = None
        self.trigger: Path | None = None
        if component == "agent" and step == "created":
            # Nothing of a created container runs yet: a started sibling in its pod
            # kills the agent.
            b = _write_bundle(bundle, ["sleep", "1000"],
                              make_spec(["sleep", "1000"], annotations={POD_TYPE: "sandbox"}))
            self.bundle = b
            self.sibling = cid + "-k"
            self.sibling_bundle = _write_bundle(bundle, KILL_AGENT, _agent_killer_spec(
                {POD_TYPE: "container", POD_SANDBOX: cid}))
            self.trigger = self.sibling_bundle / "rootfs" / TRIGGER
        elif component == "agent":
            self.bundle = _write_bundle(bundle, KILL_AGENT, _agent_killer_spec())
            self.trigger = self.bundle / "rootfs" / TRIGGER
        else:
            self.bundle = _write_bundle(bundle, ["sleep", "1000"])

    def inject(self, pids: dict[str, int], shim: int) -> None:
        match self.component:
            case "agent":
                assert self.trigger is not None
                qemu = pids["qemu"]
                self.trigger.write_text("")
                assert wait_gone([qemu], 60) == [], "the guest did not go down"
            case "shim":
                os.kill(shim, signal.SIGKILL)
            case name:
                os.kill(pids[name], signal.SIGKILL)


def _status(rt: Runtime, cid: str) -> str | None:
    return rt.status(cid)


def _guest_status(rt: Runtime, cid: str) -> str:
    """What the guest's crun says of the container, asked through the monitor."""
    from vmrt.errors import MonitorError
    from vmrt.monitor.client import MonitorClient

    sock = rt.root / "sandboxes" / cid / "monitor.sock"
    try:
        with MonitorClient(sock, timeout=10) as mon:
            return str(mon.call("state_container", id=cid)["status"])
    except MonitorError as exc:
        return f"error: {exc}"


def _assert_workload_gone(rt: Runtime, cid: str, pids: dict[str, int]) -> None:
    """`stopped` must be the truth: the VM is gone, or its crun no longer runs the
    container's process (checked through the monitor, while it lives)."""
    seen = [""]

    def gone() -> bool:
        if not pid_alive(pids["qemu"]):
            return True
        if not pid_alive(pids["monitor"]):
            seen[0] = "the monitor is dead but QEMU still runs"
            return False
        seen[0] = _guest_status(rt, cid)
        return seen[0] == "stopped" or seen[0].startswith("error")

    assert wait_until(gone, STATE_BOUND_S, interval=0.1), (
        f"state says stopped, but the workload lives on: {seen[0]}")


def _assert_all_gone(rt: Runtime, pids: list[int]) -> None:
    assert wait_gone(pids, 10) == [], f"still alive after delete --force: {pids}"
    for sub in ("containers", "sandboxes"):
        d = rt.root / sub
        left = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        assert left == [], f"{d} still holds {left}"
    assert rt.list_ids() == []


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("component", COMPONENTS)
def test_fault(runtime: Runtime, bundle, new_id, tmp_path: Path, component: str,
               step: str) -> None:
    rt = runtime
    cid = new_id()
    case = Case(rt, bundle, cid, component, step, tmp_path)
    with SubreaperRun(rt, case.bundle, cid, tmp_path / "pid", start=step != "created") as run:
        assert run.wait_event("created", rt.spec.op_timeout)["child"], run.events
        if step != "created":
            assert run.wait_event("start", rt.spec.op_timeout)["rc"] == 0, run.events
        shim = int((tmp_path / "pid").read_text())
        if case.sibling is not None:
            rt.ok("run", "--detach", "--bundle", str(case.sibling_bundle), case.sibling)
        pids = _pids(rt, cid)
        everyone = [*pids.values(), shim]
        assert all(pid_alive(p) for p in everyone), pids
        assert rt.status(cid) == ("created" if step == "created" else "running")

        t0 = time.monotonic()
        if step == "deleting":
            delete = _delete_during_fault(rt, case, pids, shim)
            print(f"{component}/{step}: the interrupted delete ended (rc {delete[0]}) "
                  f"{time.monotonic() - t0:.2f}s after the fault")
        else:
            case.inject(pids, shim)
            seen = rt.wait_status(cid, "stopped", STATE_BOUND_S)
            assert seen == "stopped", f"state says {seen!r} after the {component} died"
            print(f"{component}/{step}: stopped after {time.monotonic() - t0:.2f}s")
            _assert_workload_gone(rt, cid, pids)
            delete = None

        # The client (conmon) sees an exit status, not a hang.
        ev = run.wait_event("exit", 60)
        assert ev["child"] is True, run.events
        assert ("signaled" in ev) or ev.get("exited") == 255, ev

    if delete is not None:
        rc, err = delete
        assert rc == 0 or single_line(err), f"delete failed uncleanly: rc={rc} {err!r}"
        assert _status(rt, cid) in (None, "stopped")
    t0 = time.monotonic()
    for c in filter(None, (case.sibling, cid)):
        res = rt.run("delete", "--force", c)
        assert res.returncode == 0, res
        assert res.stderr == "", res
    print(f"{component}/{step}: delete --force took {time.monotonic() - t0:.2f}s")
    _assert_all_gone(rt, everyone)


def _delete_during_fault(rt: Runtime, case: Case, pids: dict[str, int],
                         shim: int) -> tuple[int, str]:
    """`delete --force` stuck on a stopped monitor while the fault strikes; (rc, stderr)."""
    with tempfile.TemporaryFile() as err:
        with _stopped(pids["monitor"]):
            proc = subprocess.Popen(rt.argv("delete", "--force", case.cid),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err)
            try:
                assert _wait_blocked_in_poll(proc.pid, 30), "delete never reached the monitor"
                assert proc.poll() is None, "delete finished with the monitor stopped"
                case.inject(pids, shim)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        # The monitor runs again (or is dead): delete must finish on its own, bounded.
        try:
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        return rc, err.read().decode(errors="replace")


def test_delete_force_with_the_sandbox_state_gone(runtime: Runtime, bundle, new_id) -> None:
    """sandbox.json removed by hand under a running container: `delete --force` still
    removes everything, finding the VM's processes by their argv."""
    rt = runtime
    cid = new_id()
    rt.ok("run", "--detach", "--bundle", str(bundle(["sleep", "1000"])), cid)
    pids = [*_pids(rt, cid).values(), rt.state(cid)["pid"]]
    shutil.rmtree(rt.root / "sandboxes" / cid)
    res = rt.run("delete", "--force", cid)
    assert res.returncode == 0 and res.stderr == "", res
    _assert_all_gone(rt, pids)


def test_create_killed_while_its_vm_boots(runtime: Runtime, bundle, new_id) -> None:
    """The client dies mid-`create` (no undo runs): the container reads `stopped`, and
    `delete --force` takes down the VM that nobody's state names yet."""
    from vmrt.runtime import procscan

    rt = runtime
    cid = new_id()
    proc = subprocess.Popen(rt.argv("create", "--bundle", str(bundle(["sleep", "1000"])), cid),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: any(p.kind == "qemu" for p in procscan.of_sandbox(
            rt.root, cid)), 60), "no QEMU appeared"
    finally:
        proc.kill()
        proc.wait()
    vm = [p.pid for p in procscan.of_sandbox(rt.root, cid)]
    assert rt.wait_status(cid, "stopped", STATE_BOUND_S) == "stopped"
    res = rt.run("delete", "--force", cid)
    assert res.returncode == 0 and res.stderr == "", res
    _assert_all_gone(rt, vm)
