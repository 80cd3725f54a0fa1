"""ps, pause/resume, update and events through the runc command line, as a user checks them.

Runs unchanged against runc and vmrt (VMRT_TEST_RUNTIME=runc). What differs
by design is said where it is checked: vmrt's pids are guest pids, and its
events stream ends once the container has stopped (runc's goes on forever).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import runc_texts as T
from helpers.procs import wait_until
from helpers.runtime import Runtime, assert_error

pytestmark = pytest.mark.vm

SLEEP = ["sleep", "1000"]
# Counts in a file of its rootfs, which the test reads on the host (for vmrt, through
# virtio-fs): a frozen container stops counting.
COUNTER = ["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /count; sleep 0.05; done"]
MiB = 1 << 20


def run_detached(rt: Runtime, bundle: Path, cid: str) -> None:
    res = rt.run("run", "--detach", "--bundle", str(bundle), cid)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res


def create(rt: Runtime, bundle: Path, cid: str) -> None:
    res = rt.run("create", "--bundle", str(bundle), cid)
    assert res.returncode == 0, res


def stats(rt: Runtime, cid: str) -> dict[str, Any]:
    lines = rt.ok("events", "--stats", cid).stdout.splitlines()
    assert len(lines) == 1, lines
    event = json.loads(lines[0])
    assert (event["type"], event["id"]) == ("stats", cid), event
    return event["data"]


def count(bundle: Path) -> int:
    text = (bundle / "rootfs" / "count").read_text().strip() if (
        bundle / "rootfs" / "count").exists() else ""
    return int(text) if text.isdigit() else 0


def counting(bundle: Path, timeout: float = 30) -> bool:
    first = count(bundle)
    return wait_until(lambda: count(bundle) > first, timeout, interval=0.05)


class Events:
    """`events` running in the background, its JSON lines collected as they come."""

    def __init__(self, rt: Runtime, *args: str) -> None:
        self.proc = subprocess.Popen(rt.argv("events", *args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            event = json.loads(line)
            self.seen.append(event)
            if event["type"] == kind:
                return event
        raise AssertionError(f"no {kind!r} event in {timeout}s; got {self.seen}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)


# -- ps ---------------------------------------------------------------------------------------

def test_ps_lists_the_containers_processes(runtime: Runtime, bundle, new_id) -> None:
    cid = new_id()
    run_detached(runtime, bundle(["sh", "-c", "sleep 1000 & sleep 2000"]), cid)
    try:
        pids = json.loads(runtime.ok("ps", "--format", "json", cid).stdout)
        assert isinstance(pids, list) and len(pids) == 2, pids  # sh exec'd sleep 2000, + one
        assert all(isinstance(p, int) and p > 0 for p in pids), pids

        table = runtime.ok("ps", cid).stdout.splitlines()  # runc's default: ps -ef
        assert "PID" in table[0].split(), table
        assert len(table) == 3, table
        assert any(line.endswith("sleep 1000") for line in table), table
        assert any(line.endswith("sleep 2000") for line in table), table
        column = table[0].split().index("PID")
        assert sorted(int(line.split()[column]) for line in table[1:]) == sorted(pids)

        table = runtime.ok("ps", cid, "-eo", "pid,comm").stdout.splitlines()
        assert table[0].split() == ["PID", "COMMAND"], table
        assert sorted(line.split()[1] for line in table[1:]) == ["sleep", "sleep"], table

        assert_error(runtime.run("ps", "--format", "xml", cid), T.PS_BAD_FORMAT)
    finally:
        runtime.ok("delete", "--force", cid)
    assert_error(runtime.run("ps", cid), T.CONTAINER_NOT_EXIST)


def test_ps_of_a_stopped_container_lists_nothing(runtime: Runtime, bundle, new_id) -> None:
    cid = new_id()
    run_detached(runtime, bundle(["true"]), cid)
    assert runtime.wait_status(cid, "stopped") == "stopped"
    assert runtime.ok("ps", "--format", "json", cid).stdout == "null\n"  # runc's quirk
    table = runtime.ok("ps", cid).stdout.splitlines()
    assert len(table) == 1 and "PID" in table[0].split(), table
    runtime.ok("delete", cid)


# -- pause / resume ---------------------------------------------------------------------------

def test_pause_freezes_and_resume_thaws(runtime: Runtime, bundle, new_id) -> None:
    cid = new_id()
    b = bundle(COUNTER)
    run_detached(runtime, b, cid)
    try:
        assert counting(b), "the container never counted"
        runtime.ok("pause", cid)
        assert runtime.state(cid)["status"] == "paused"
        assert runtime.list_ids() == [cid]
        frozen = count(b)
        time.sleep(1.0)
        assert count(b) == frozen, "a paused container went on counting"

        assert_error(runtime.run("pause", cid), T.PAUSE_NOT_RUNNING)
        assert_error(runtime.run("start", cid), T.START_PAUSED)
        assert_error(runtime.run("delete", cid), T.DELETE_PAUSED.format(id=cid))
        assert json.loads(runtime.ok("ps", "--format", "json", cid).stdout), "no pids while paused"

        runtime.ok("resume", cid)
        assert runtime.state(cid)["status"] == "running"
        assert counting(b), "a resumed container does not count"
        assert_error(runtime.run("resume", cid), T.RESUME_NOT_PAUSED)
    finally:
        runtime.ok("delete", "--force", cid)


def test_pause_a_created_container_then_resume_it_created(runtime: Runtime, bundle,
                                                          new_id) -> None:
    cid = new_id()
    create(runtime, bundle(SLEEP), cid)
    try:
        runtime.ok("pause", cid)
        assert runtime.state(cid)["status"] == "paused"
        runtime.ok("resume", cid)
        assert runtime.state(cid)["status"] == "created"
        runtime.ok("start", cid)
        assert runtime.state(cid)["status"] == "running"
    finally:
        runtime.ok("delete", "--force", cid)


def test_a_paused_container_can_be_killed_and_force_deleted(runtime: Runtime, bundle,
                                                            new_id) -> None:
    killed, deleted = new_id(), new_id()
    run_detached(runtime, bundle(SLEEP), killed)
    run_detached(runtime, bundle(SLEEP), deleted)
    runtime.ok("pause", killed)
    runtime.ok("pause", deleted)
    runtime.ok("kill", killed, "KILL")
    assert runtime.wait_status(killed, "stopped") == "stopped"
    assert_error(runtime.run("resume", killed), T.RESUME_NOT_PAUSED)
    runtime.ok("delete", killed)
    runtime.ok("delete", "--force", deleted)
    assert runtime.list_ids() == []


# -- update -----------------------------------------------------------------------------------

def test_update_flags_and_documents_reach_the_cgroup(runtime: Runtime, bundle, new_id) -> None:
    cid = new_id()
    run_detached(runtime, bundle(SLEEP), cid)
    try:
        runtime.ok("update", "--memory", "64m", "--pids-limit", "7", cid)
        data = stats(runtime, cid)
        assert data["memory"]["usage"]["limit"] == 64 * MiB, data["memory"]
        assert data["pids"]["limit"] == 7, data["pids"]

        # CRI-O's way: the document on stdin; the flags' values stay unless named
        doc = {"memory": {"limit": 48 * MiB}}
        runtime.ok("update", "--resources", "-", cid, input=json.dumps(doc))
        data = stats(runtime, cid)
        assert data["memory"]["usage"]["limit"] == 48 * MiB, data["memory"]
        assert data["pids"]["limit"] == 7, data["pids"]

        assert_error(runtime.run("update", "--memory", "abc", cid),
                     T.UPDATE_BAD_MEMORY.format(value="abc"))
        res = runtime.run("update", "--resources", "-", cid, input="garbage")
        assert res.returncode == 1 and res.stdout == "", res
    finally:
        runtime.ok("delete", "--force", cid)


def test_update_of_a_stopped_container_fails(runtime: Runtime, bundle, new_id) -> None:
    cid = new_id()
    run_detached(runtime, bundle(["true"]), cid)
    assert runtime.wait_status(cid, "stopped") == "stopped"
    assert_error(runtime.run("update", "--memory", "64m", cid), T.UPDATE_NOT_RUNNING)
    runtime.ok("delete", cid)
    assert_error(runtime.run("update", "--memory", "64m", cid), T.CONTAINER_NOT_EXIST)


# -- events -----------------------------------------------------------------------------------

def test_events_stats_once(runtime: Runtime, bundle, new_id) -> None:
    cid = new_id()
    run_detached(runtime, bundle(["sh", "-c", "sleep 1000 & sleep 1000"]), cid)
    try:
        data = stats(runtime, cid)
        assert data["cpu"]["usage"]["total"] > 0, data["cpu"]
        assert data["memory"]["usage"]["usage"] > 0, data["memory"]
        assert data["pids"]["current"] == 2, data["pids"]
        assert "blkio" in data and "network_interfaces" in data, sorted(data)
        assert_error(runtime.run("events", "--interval", "0", cid), T.EVENTS_BAD_INTERVAL)
    finally:
        runtime.ok("delete", "--force", cid)
    assert_error(runtime.run("events", "--stats", cid), T.CONTAINER_NOT_EXIST)


def test_events_streams_stats_every_interval(runtime: Runtime, bundle, new_id) -> None:
    cid = new_id()
    run_detached(runtime, bundle(SLEEP), cid)
    events = Events(runtime, "--interval", "300ms", cid)
    try:
        first = events.wait_for("stats", 30)
        second = events.wait_for("stats", 30)
        assert first["id"] == second["id"] == cid
    finally:
        events.stop()
        runtime.ok("delete", "--force", cid)


def test_events_of_a_stopped_container_fails(runtime: Runtime, bundle, new_id) -> None:
    cid = new_id()
    run_detached(runtime, bundle(["true"]), cid)
    assert runtime.wait_status(cid, "stopped") == "stopped"
    assert_error(runtime.run("events", "--stats", cid), T.EVENTS_NOT_RUNNING.format(id=cid))
    runtime.ok("delete", cid)


# -- OOM --------------------------------------------------------------------------------------

def oom_bundle(bundle) -> Path:  # noqa: ANN001 - the fixture's factory
    """`tail /dev/zero` is the container's init and grows until the OOM killer ends it."""
    from helpers.rootfs import edit_config

    b = bundle(["tail", "/dev/zero"])

    def limit(spec: dict[str, Any]) -> None:
        spec["linux"]["resources"]["memory"] = {"limit": 32 * MiB, "swap": 32 * MiB}

    edit_config(b, limit)
    return b


def test_oom_kill_exits_137(runtime: Runtime, bundle, new_id) -> None:
    res = runtime.run("run", "--bundle", str(oom_bundle(bundle)), new_id())
    assert res.returncode == 137, res


def test_oom_kill_is_an_event(runtime: Runtime, bundle, new_id) -> None:
    cid = new_id()
    create(runtime, oom_bundle(bundle), cid)
    events = Events(runtime, "--interval", "1s", cid)
    try:
        time.sleep(0.5)  # events has connected and read its baseline
        runtime.ok("start", cid)
        oom = events.wait_for("oom", 60)
        assert oom == {"type": "oom", "id": cid}
        assert runtime.wait_status(cid, "stopped") == "stopped"
        if runtime.is_vmrt:  # vmrt's stream ends with the container; runc's never does
            assert events.proc.wait(timeout=30) == 0
    finally:
        events.stop()
        runtime.ok("delete", "--force", cid)
