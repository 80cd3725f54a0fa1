"""`vmrt debug` against real pod VMs: ls, qmp, logs (with --follow), console, and
machine-readable --log records that name their container."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers.procs import pid_alive, wait_gone, wait_until
from helpers.runtime import Runtime, assert_error

pytestmark = pytest.mark.vm

SLEEP = ["sleep", "1000"]


@pytest.fixture(autouse=True)
def _vmrt_only(runtime: Runtime) -> None:
    if not runtime.is_vmrt:
        pytest.skip("vmrt debug is vmrt's own verb; runc has no pod VMs")


def create(rt: Runtime, bundle: Path, cid: str) -> str:
    """Create a sleeping container; return its sandbox id."""
    rt.ok("create", "--bundle", str(bundle), cid)
    return str(rt.state(cid).get("sandbox", cid))


def vm_json(rt: Runtime) -> list[dict]:
    res = rt.ok("debug", "ls", "--format", "json")
    data = json.loads(res.stdout)
    assert isinstance(data, list), res
    return data


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_ls_shows_the_vm_then_its_death(runtime: Runtime, bundle, new_id) -> None:
    cid = new_id()
    sb = create(runtime, bundle(SLEEP), cid)
    [vm] = vm_json(runtime)
    assert (vm["id"], vm["status"], vm["members"]) == (sb, "running", [cid])
    qemu = vm["qemu"]["pid"]
    argv = cmdline(qemu)
    assert "qemu-system" in argv[0] and f"vmrt-{sb}"[:37] in " ".join(argv), argv
    assert vm["accel"] in ("tcg", "kvm") and vm["vcpus"] >= 1
    assert argv[argv.index("-m") + 1].split(",")[0] == f"{vm['memory_mib']}M", \
        "the memory shown is not QEMU's"
    [dev] = vm["devices"]
    assert (dev["kind"], dev["owner"]) == ("virtiofs", cid) and dev["helper"]["alive"], vm
    assert "virtiofsd" in " ".join(cmdline(dev["helper"]["pid"]))

    table = runtime.ok("debug", "ls").stdout.splitlines()
    assert table[0].split()[:4] == ["SANDBOX", "STATUS", "QEMU", "MONITOR"]
    row = next(line.split() for line in table[1:] if line.split()[0] == sb)
    assert row[1:3] == ["running", str(qemu)], table

    os.kill(qemu, signal.SIGKILL)  # the VM dies under vmrt's feet
    assert not wait_gone([qemu], 10), "QEMU did not die"
    assert wait_until(lambda: vm_json(runtime)[0]["status"] == "dead", 30), vm_json(runtime)
    [vm] = vm_json(runtime)
    assert vm["qemu"] == {"pid": qemu, "alive": False}
    row = next(line.split() for line in runtime.ok("debug", "ls").stdout.splitlines()
               if line.split()[0] == sb)
    assert row[1:3] == ["dead", f"{qemu}(dead)"]
    runtime.ok("delete", "--force", cid)
    assert vm_json(runtime) == []


def test_qmp_through_the_monitor(runtime: Runtime, bundle, new_id) -> None:
    cid = new_id()
    sb = create(runtime, bundle(SLEEP), cid)
    status = json.loads(runtime.ok("debug", "qmp", sb, "query-status").stdout)
    assert status["status"] == "running" and status["running"] is True
    # A member container's id names its VM too.
    assert json.loads(runtime.ok("debug", "qmp", cid, "query-status").stdout)["running"] is True

    pci = runtime.ok("debug", "qmp", sb, "query-pci").stdout
    [vm] = vm_json(runtime)
    assert vm["devices"][0]["id"] in pci, "the plugged share is not on QEMU's PCI bus"

    hmp = runtime.ok("debug", "qmp", sb, "human-monitor-command",
                     '{"command-line": "info status"}')
    assert hmp.stdout == "VM status: running\n"

    refused = runtime.run("debug", "qmp", sb, "quit")
    assert_error(refused, None)
    assert "refused" in refused.stderr
    bad = runtime.run("debug", "qmp", sb, "query-status", "[1, 2]")
    assert_error(bad, "ARGS-JSON must be a JSON object")
    unknown = runtime.run("debug", "qmp", sb, "no-such-command")
    assert_error(unknown, None)
    assert "no-such-command" in unknown.stderr

    # quit was refused: the VM and its container are still there.
    assert vm_json(runtime)[0]["status"] == "running"
    assert runtime.status(cid) == "created"
    runtime.ok("delete", "--force", cid)


def test_logs_show_the_agent_and_follow_until_the_vm_goes(runtime: Runtime, bundle, new_id,
                                                           tmp_path: Path) -> None:
    cid = new_id()
    sb = create(runtime, bundle(SLEEP), cid)
    agent = runtime.ok("debug", "logs", "--source", "agent", sb).stdout
    assert "vmrt-agent:" in agent and "serving on vmrt.agent" in agent, agent
    assert all(line.startswith("vmrt-agent:") for line in agent.splitlines()), agent

    every = runtime.ok("debug", "logs", cid).stdout
    for source in ("console", "qemu", "monitor", "virtiofsd"):
        assert f"==> {source}: {runtime.root}/sandboxes/{sb}/{source}.log <==" in every, every
    assert "serving on vmrt.agent" in every
    assert "\x1b" not in every, "terminal escapes from the console must not reach the user"
    monitor = runtime.ok("debug", "logs", "-s", "monitor", sb).stdout.splitlines()
    launch = [json.loads(line) for line in monitor if '"launching qemu"' in line]
    assert launch and launch[0]["sandbox"] == sb and launch[0]["level"] == "info"

    out = tmp_path / "follow.txt"
    with out.open("wb") as f:
        follow = subprocess.Popen(runtime.argv("debug", "logs", "--follow", "-n", "0", sb),
                                  stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # let it reach the ends of the files before the next record
        runtime.ok("debug", "qmp", sb, "query-name")
        assert wait_until(lambda: '"debug qmp"' in out.read_text(), 30), out.read_text()
        followed = [line for line in out.read_text().splitlines() if line.startswith("monitor: ")]
        record = json.loads(next(line for line in followed if '"debug qmp"' in line)[9:])
        assert (record["command"], record["sandbox"]) == ("query-name", sb)
        runtime.ok("delete", "--force", cid)
        follow.wait(timeout=30)  # it ends by itself once the VM is gone
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 0, out.read_text()
    assert not pid_alive(follow.pid)


class Console:
    """`vmrt debug console` on a real terminal (a pty), driven like a user would."""

    def __init__(self, rt: Runtime, config: Path, sandbox: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(rt.argv("--config", str(config), "debug", "console", sandbox),
                                     stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self.seen = b""

    def read_until(self, needle: bytes, timeout: float = 60) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.seen and time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the console exited and closed the terminal
                    break
                self.seen += chunk
        assert needle in self.seen, f"no {needle!r} from the console: {self.seen[-2000:]!r}"
        return self.seen

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self.master)


def test_console_is_a_shell_in_the_guest(runtime: Runtime, bundle, new_id, tmp_path: Path) -> None:
    cid = new_id()
    sb = create(runtime, bundle(SLEEP), cid)
    off = runtime.run("--config", str(tmp_path / "absent.toml"), "debug", "console", sb)
    assert_error(off, "the debug console is disabled: set debug_console = true in "
                      f"{tmp_path / 'absent.toml'}")
    on = tmp_path / "on.toml"
    on.write_text("debug_console = true\n")

    first = Console(runtime, on, sb)
    try:
        first.read_until(b"vmrt-guest:")
        # PID 1 is the agent and crun's bundles are in view: the VM, not a container.
        # (Markers are split by "" so that the terminal's echo of the command is no match.)
        first.send("echo pid\"\"1=$(tr '\\0' ' ' < /proc/1/cmdline); ls /run/vmrt/bundles; "
                   "echo she\"\"ll=$$; tty")
        out = first.read_until(b"/dev/pts/")
        after = out.split(b"pid1=", 1)[1]
        assert after.startswith(b"/usr/bin/python3") and b"/init" in after, out
        assert cid.encode() in after, "the container's bundle is not there"
        shell_pid = int(out.split(b"shell=")[1].split()[0])
        # The operator's terminal goes away: the monitor hangs the shell up.
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=30)
    finally:
        first.close()

    second = Console(runtime, on, cid)  # a member container's id names the VM too
    try:
        second.read_until(b"vmrt-guest:")
        second.send(f"i=0; while kill -0 {shell_pid} 2>/dev/null && [ $i -lt 100 ]; do "
                    "sleep 0.1; i=$((i+1)); done; kill -0 "
                    f"{shell_pid} 2>/dev/null && echo still\"\"-there || echo hung\"\"-up; exit 3")
        out = second.read_until(b"hung-up", timeout=60)
        assert b"still-there" not in out, out
        assert second.proc.wait(timeout=60) == 3, "the shell's exit status is the console's"
    finally:
        second.close()
    assert runtime.status(cid) == "created", "the console disturbed the container"
    runtime.ok("delete", "--force", cid)


def test_json_log_after_a_lifecycle_is_machine_readable(runtime: Runtime, bundle, new_id) -> None:
    cid = new_id()
    b = bundle(["sh", "-c", "exit 0"])
    runtime.ok("--debug", "create", "--bundle", str(b), cid)
    runtime.ok("--debug", "start", cid)
    assert runtime.wait_status(cid, "stopped") == "stopped"
    runtime.ok("--debug", "state", cid)
    assert_error(runtime.run("--debug", "start", cid), "cannot start a container that has stopped")
    runtime.ok("--debug", "delete", cid)
    assert_error(runtime.run("--debug", "kill", cid, "KILL"), "container does not exist")

    lines = runtime.log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert len(records) >= 6
    for rec in records:
        assert isinstance(rec, dict) and {"level", "msg", "time"} <= set(rec), rec
        assert rec["container"] == cid, f"a record without its container: {rec}"
    verbs = [r["msg"] for r in records if r["level"] == "debug"]
    assert verbs[:4] == ["vmrt create", "vmrt start", "vmrt state", "vmrt start"], verbs
    errors = [r["msg"] for r in records if r["level"] == "error"]
    assert errors == ["cannot start a container that has stopped", "container does not exist"]
