"""The pure parts of `vmrt debug` and of the CLI's log records: status derivation, log
cleaning, the monitor's QMP policy, sandbox resolution, and "container" in --log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmrt.errors import MonitorError, NotFoundError
from vmrt.monitor import debugging
from vmrt.paths import Root
from vmrt.runtime.context import Context
from vmrt.runtime.debug import ProcessInfo, clean, list_vms, read_logs, resolve_sandbox, vm_status
from vmrt.state.model import ContainerState, Device, ProcessRef, SandboxState, Status
from vmrt.util.proc import start_time

VMRT = str(Path(sys.executable).parent / "vmrt")
ALIVE, DEAD = ProcessInfo(1, True), ProcessInfo(2, False)


def test_vm_status() -> None:
    assert vm_status(ALIVE, ALIVE) == "running"
    assert vm_status(ALIVE, DEAD) == "dead"
    assert vm_status(DEAD, DEAD) == "dead"
    assert vm_status(DEAD, ALIVE) == "orphaned"
    assert vm_status(None, ALIVE) == "orphaned"
    assert vm_status(ALIVE, None) == "starting"
    assert vm_status(DEAD, None) == "dead"


def test_clean_keeps_text_and_drops_terminal_controls() -> None:
    raw = "\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS\r\nBooting..\x1b]0;title\x07ok\x9b31m\x00\ttab\n"
    assert clean(raw) == "SeaBIOS\nBooting..ok31m\ttab\n"


@pytest.mark.parametrize("cmd", ["quit", "device_del", "getfd", "chardev-add", "system_reset"])
def test_qmp_policy_refuses_what_the_monitor_owns(cmd: str) -> None:
    with pytest.raises(MonitorError) as err:
        debugging.parse_qmp({"command": cmd})
    assert err.value.kind == "invalid" and cmd in str(err.value)


def test_qmp_policy_passes_queries_and_validates() -> None:
    assert debugging.parse_qmp({"command": "query-status"}) == ("query-status", {})
    assert debugging.parse_qmp({"command": "human-monitor-command",
                            "arguments": {"command-line": "info pci"}}) == \
        ("human-monitor-command", {"command-line": "info pci"})
    for bad in ({"command": "query status"}, {"command": "x", "arguments": [1]}, {}):
        with pytest.raises(Exception):  # noqa: B017 - ProtocolError or MonitorError
            debugging.parse_qmp(bad)


def _root_with_vm(tmp_path: Path) -> Context:
    ctx = Context(Root.at(str(tmp_path / "root")))
    ctx.store.create_sandbox_dir("sb1")
    me = ProcessRef(os.getpid(), start_time(os.getpid()) or 0)
    gone = ProcessRef(me.pid, me.start_time + 1)  # same pid, another start: not this process
    ctx.store.save_sandbox(SandboxState(
        id="sb1", name="pod", created="now", accel="tcg", vcpus=2, memory_mib=256,
        monitor=me, qemu=gone, members=("c1",),
        devices=(Device("fs-1", "virtiofs", 0, "c1", me),)))
    ctx.store.reserve_container("c1")
    ctx.store.save_container(ContainerState(id="c1", bundle="/b", sandbox="sb1", role="container",
                                            status=Status.CREATED, created="now"))
    return ctx


def test_list_vms_checks_pids_with_their_start_time(tmp_path: Path) -> None:
    ctx = _root_with_vm(tmp_path)
    [vm] = list_vms(ctx)
    assert (vm.id, vm.status, vm.accel, vm.vcpus, vm.memory_mib, vm.members) == \
        ("sb1", "dead", "tcg", 2, 256, ("c1",))
    assert vm.qemu == ProcessInfo(os.getpid(), False), "a recycled pid must not pass for QEMU"
    assert vm.devices[0].helper == ProcessInfo(os.getpid(), True)
    res = subprocess.run([VMRT, "--root", str(ctx.root.path), "debug", "ls", "--format", "json"],
                         capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(res.stdout)[0]["qemu"] == {"pid": os.getpid(), "alive": False}


def test_resolve_sandbox_takes_a_member_container(tmp_path: Path) -> None:
    ctx = _root_with_vm(tmp_path)
    assert resolve_sandbox(ctx, "sb1") == "sb1"
    assert resolve_sandbox(ctx, "c1") == "sb1"
    with pytest.raises(NotFoundError):
        resolve_sandbox(ctx, "nope")


def test_read_logs_agent_source_and_tail(tmp_path: Path) -> None:
    ctx = _root_with_vm(tmp_path)
    sbdir = ctx.root.sandbox("sb1")
    sbdir.console_log.write_bytes(b"\x1bcBooting from ROM..vmrt-agent: INFO serving\r\n"
                                  b"[    1.0] kernel line\r\nvmrt-agent: INFO second\r\n")
    logs = {log.source: log.text for log in read_logs(ctx, "c1", ("console", "agent", "qemu"))}
    assert logs["agent"] == "vmrt-agent: INFO serving\nvmrt-agent: INFO second\n"
    assert logs["console"].splitlines()[1] == "[    1.0] kernel line"
    assert logs["qemu"] == ""  # no file yet
    [last] = [log.text for log in read_logs(ctx, "sb1", ("console",), tail=1)]
    assert last == "vmrt-agent: INFO second\n"


def test_cli_log_records_name_the_container(tmp_path: Path) -> None:
    """Every --log record of a verb that takes a container carries "container"; every
    line of a json log parses."""
    log = tmp_path / "log.json"
    root = tmp_path / "root"
    base = [VMRT, "--root", str(root), "--log", str(log), "--log-format", "json", "--debug"]
    for args in (["state", "nope1"], ["kill", "nope2", "KILL"], ["delete", "nope3"]):
        subprocess.run([*base, *args], capture_output=True, timeout=30, check=False)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    errors = [r for r in records if r["level"] == "error"]
    assert [r["container"] for r in errors] == ["nope1", "nope2", "nope3"]
    assert all(r["msg"] == "container does not exist" for r in errors)
    assert all("container" in r and "time" in r for r in records)


def test_debug_console_is_off_unless_configured(tmp_path: Path) -> None:
    ctx = _root_with_vm(tmp_path)
    res = subprocess.run([VMRT, "--root", str(ctx.root.path), "--config", str(tmp_path / "none.toml"),
                          "debug", "console", "sb1"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 1 and res.stdout == ""
    assert "debug console is disabled" in res.stderr and "debug_console = true" in res.stderr


def test_follow_logs_joins_split_lines_and_ends_with_the_vm(tmp_path: Path) -> None:
    import shutil
    import threading

    from vmrt.runtime.debug import follow_logs

    ctx = _root_with_vm(tmp_path)
    console = ctx.root.sandbox("sb1").console_log
    console.write_bytes(b"old line\n")
    got: list[tuple[str, str]] = []
    start = {"console": console.stat().st_size, "agent": console.stat().st_size}
    reader = threading.Thread(target=lambda: got.extend(follow_logs(ctx, "sb1", start)))
    reader.start()
    # A line, a UTF-8 character and an escape sequence each cut in two by the writer.
    for piece in (b"Booting..vmrt-agent: caf\xc3", b"\xa9 \x1b[", b"2Jserving\r\nplain ", b"line\n"):
        with console.open("ab") as f:
            f.write(piece)
        time.sleep(0.3)
    shutil.rmtree(ctx.root.sandbox("sb1").path)  # the VM is deleted: following ends
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert sorted(got) == [("agent", "vmrt-agent: café serving"),
                           ("console", "Booting..vmrt-agent: café serving"),
                           ("console", "plain line")]
