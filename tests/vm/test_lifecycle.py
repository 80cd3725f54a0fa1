"""Container lifecycle through the runc command line: what a user (or conmon, or
containerd's shim) checks.  Runs unchanged against runc and vmrt."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from helpers import runc_texts as T
from helpers.procs import pid_alive, wait_gone
from helpers.reaper_client import SubreaperRun
from helpers.runtime import Runtime, assert_error

pytestmark = pytest.mark.vm

SLEEP = ["sleep", "1000"]


def create(rt: Runtime, bundle: Path, cid: str, pid_file: Path | None = None,
           stdin: object = None) -> None:
    args = ["create", "--bundle", str(bundle)]
    if pid_file is not None:
        args += ["--pid-file", str(pid_file)]
    res = rt.run(*args, cid, stdin=stdin)
    assert res.returncode == 0, f"create failed: {res}"
    assert res.stdout == "" and res.stderr == "", f"create must print nothing: {res}"


def read_pid(pid_file: Path) -> int:
    text = pid_file.read_text()
    assert re.fullmatch(r"[1-9][0-9]*", text.strip()), f"pid file holds {text!r}"
    return int(text)


# -- run ------------------------------------------------------------------------------------

def test_run_prints_output_and_exits_zero(runtime: Runtime, bundle, new_id) -> None:
    b = bundle(["echo", "hello from the container"])
    cid = new_id()
    res = runtime.run("run", "--bundle", str(b), cid)
    assert res.returncode == 0, res
    assert res.stdout == "hello from the container\n", res
    assert res.stderr == "", res
    assert runtime.list_ids() == [], "run (not detached) must delete the container"


def test_run_propagates_exit_code(runtime: Runtime, bundle, new_id) -> None:
    b = bundle(["sh", "-c", "exit 3"])
    res = runtime.run("run", "--bundle", str(b), new_id())
    assert res.returncode == 3, res
    assert res.stdout == "" and res.stderr == "", res


def test_run_stdin_reaches_cat(runtime: Runtime, bundle, new_id) -> None:
    # Big enough to need several reads/writes, ends without a newline on purpose.
    data = "".join(f"line {i:05d} of the input\n" for i in range(3000)) + "no newline at end"
    b = bundle(["cat"])
    res = runtime.run("run", "--bundle", str(b), new_id(), input=data)
    assert res.returncode == 0, res
    assert res.stdout == data, f"cat echoed {len(res.stdout)} of {len(data)} bytes"
    assert res.stderr == ""


def test_run_keeps_stdout_and_stderr_apart(runtime: Runtime, bundle, new_id) -> None:
    b = bundle(["sh", "-c", "echo to-stdout; echo to-stderr >&2; echo more-stdout; exit 5"])
    res = runtime.run("run", "--bundle", str(b), new_id())
    assert res.returncode == 5, res
    assert res.stdout == "to-stdout\nmore-stdout\n", res
    assert res.stderr == "to-stderr\n", res


def test_run_detach_state_kill_delete(runtime: Runtime, bundle, new_id) -> None:
    b = bundle(SLEEP)
    cid = new_id()
    res = runtime.run("run", "--detach", "--bundle", str(b), cid)
    assert res.returncode == 0, res
    assert res.stdout == "" and res.stderr == "", res
    st = runtime.state(cid)
    assert st["status"] == "running", st
    pid = st["pid"]
    assert isinstance(pid, int) and pid > 0 and pid_alive(pid), st

    runtime.ok("kill", cid, "KILL")
    assert runtime.wait_status(cid, "stopped") == "stopped"
    assert not pid_alive(pid), "state says stopped but the pid still runs"
    runtime.ok("delete", cid)
    assert_error(runtime.run("state", cid), T.CONTAINER_NOT_EXIST)
    assert runtime.list_ids() == []


# -- create / start / state / delete ---------------------------------------------------------

def test_create_start_stop_delete(runtime: Runtime, bundle, new_id, tmp_path: Path) -> None:
    # The program ends when its stdin closes: the test decides when it stops.
    b = bundle(["sh", "-c", "read line; exit 0"])
    cid = new_id()
    pid_file = tmp_path / "pid"
    rfd, wfd = os.pipe()
    try:
        create(runtime, b, cid, pid_file, stdin=rfd)
    finally:
        os.close(rfd)
    try:
        st = runtime.state(cid)
        assert st["ociVersion"], st
        assert st["id"] == cid, st
        assert st["status"] == "created", st
        assert isinstance(st["pid"], int) and st["pid"] > 0, st
        assert st["bundle"] == str(b) and os.path.isabs(st["bundle"]), st
        pid = read_pid(pid_file)
        assert pid == st["pid"], f"pid file {pid} != state pid {st['pid']}"
        assert pid_alive(pid), "the pid in --pid-file is not alive after create"

        # list, list -q and list --format json all show it while it exists
        assert runtime.list_ids() == [cid]
        table = runtime.ok("list").stdout.splitlines()
        assert table[0].split()[:3] == ["ID", "PID", "STATUS"], table
        assert any(row.split()[:3] == [cid, str(pid), "created"] for row in table[1:]), table
        listed = json.loads(runtime.ok("list", "--format", "json").stdout)
        assert [(c["id"], c["status"], c["pid"]) for c in listed] == [(cid, "created", pid)]

        runtime.ok("start", cid)
        st = runtime.state(cid)
        assert st["status"] == "running", st
        assert st["pid"] == pid, "start must not change the container's pid"
        listed = json.loads(runtime.ok("list", "--format", "json").stdout)
        assert [(c["id"], c["status"]) for c in listed] == [(cid, "running")]
    finally:
        os.close(wfd)  # EOF on the container's stdin: `read` returns, sh exits

    assert runtime.wait_status(cid, "stopped") == "stopped"
    assert wait_gone([pid], 10) == [], "state says stopped but the pid is alive"
    assert runtime.list_ids() == [cid], "a stopped container is listed until deleted"

    res = runtime.run("delete", cid)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res
    assert_error(runtime.run("state", cid), T.CONTAINER_NOT_EXIST)
    assert runtime.list_ids() == []
    assert json.loads(runtime.ok("list", "--format", "json").stdout) in (None, [])


def test_delete_created_container_kills_it(runtime: Runtime, bundle, new_id,
                                           tmp_path: Path) -> None:
    """podman create + podman rm: a never-started container goes away with its pid."""
    cid = new_id()
    pid_file = tmp_path / "pid"
    create(runtime, bundle(SLEEP), cid, pid_file)
    pid = read_pid(pid_file)
    runtime.ok("delete", "--force", cid)
    assert wait_gone([pid], 10) == []
    assert_error(runtime.run("state", cid), T.CONTAINER_NOT_EXIST)


# -- exit status as seen by a subreaper parent (what conmon does) ----------------------------

def reaper_exit(run: SubreaperRun, timeout: float) -> dict:
    ev = run.wait_event("exit", timeout)
    assert ev["child"] is True, f"the container pid was not our child: {run.events}"
    return ev


def test_subreaper_sees_exit_code(runtime: Runtime, bundle, new_id, tmp_path: Path) -> None:
    cid = new_id()
    b = bundle(["sh", "-c", "exit 3"])
    with SubreaperRun(runtime, b, cid, tmp_path / "pid", start=True) as run:
        created = run.wait_event("created", runtime.spec.op_timeout)
        assert created["child"], f"pid {created} is not a child of the subreaper: {run.events}"
        assert run.wait_event("start", runtime.spec.op_timeout)["rc"] == 0, run.events
        assert reaper_exit(run, runtime.spec.exit_timeout) == {
            "event": "exit", "child": True, "exited": 3}
        assert run.proc.wait(timeout=30) == 0
    assert runtime.wait_status(cid, "stopped") == "stopped"
    runtime.ok("delete", cid)


@pytest.mark.parametrize("sig", ["KILL", "9"])
def test_subreaper_sees_kill(runtime: Runtime, bundle, new_id, tmp_path: Path,
                             sig: str) -> None:
    cid = new_id()
    with SubreaperRun(runtime, bundle(SLEEP), cid, tmp_path / "pid", start=True) as run:
        created = run.wait_event("created", runtime.spec.op_timeout)
        assert created["child"], run.events
        assert run.wait_event("start", runtime.spec.op_timeout)["rc"] == 0, run.events
        assert runtime.state(cid)["status"] == "running"
        runtime.ok("kill", cid, sig)
        # conmon would record 128 + 9 = 137
        assert reaper_exit(run, runtime.spec.exit_timeout) == {
            "event": "exit", "child": True, "signaled": 9}
    assert runtime.wait_status(cid, "stopped") == "stopped"
    runtime.ok("delete", cid)


def test_subreaper_sees_term(runtime: Runtime, bundle, new_id, tmp_path: Path) -> None:
    # Without a pid namespace `sleep` is not a namespace init, so SIGTERM's default
    # action applies (an init without a handler would ignore it).
    cid = new_id()
    b = bundle(SLEEP, namespaces=["network", "ipc", "uts", "mount"])
    with SubreaperRun(runtime, b, cid, tmp_path / "pid", start=True) as run:
        assert run.wait_event("created", runtime.spec.op_timeout)["child"], run.events
        assert run.wait_event("start", runtime.spec.op_timeout)["rc"] == 0, run.events
        runtime.ok("kill", cid, "TERM")
        assert reaper_exit(run, runtime.spec.exit_timeout) == {
            "event": "exit", "child": True, "signaled": 15}
    assert runtime.wait_status(cid, "stopped") == "stopped"
    runtime.ok("delete", cid)


def test_subreaper_sees_exit_after_external_start(runtime: Runtime, bundle, new_id,
                                                  tmp_path: Path) -> None:
    """CRI-O's order: conmon holds the pid after create; `start` comes from elsewhere."""
    cid = new_id()
    out = tmp_path / "stdout"
    b = bundle(["sh", "-c", "echo started-by-someone-else; exit 7"])
    with out.open("wb") as f, SubreaperRun(runtime, b, cid, tmp_path / "pid",
                                           start=False, stdout=f) as run:
        created = run.wait_event("created", runtime.spec.op_timeout)
        assert created["child"], run.events
        assert runtime.state(cid)["status"] == "created"
        runtime.ok("start", cid)
        assert reaper_exit(run, runtime.spec.exit_timeout)["exited"] == 7
        run.proc.wait(timeout=30)
    assert out.read_text() == "started-by-someone-else\n"
    runtime.ok("delete", cid)


# -- verbs that must refuse ------------------------------------------------------------------

@pytest.fixture
def running(runtime: Runtime, bundle, new_id) -> str:
    cid = new_id()
    runtime.ok("run", "--detach", "--bundle", str(bundle(SLEEP)), cid)
    assert runtime.state(cid)["status"] == "running"
    return cid


@pytest.mark.parametrize("sig", ["NOSUCHSIG", "SIGNOSUCH"])
def test_kill_unknown_signal_fails(runtime: Runtime, running: str, sig: str) -> None:
    pid = runtime.state(running)["pid"]
    assert_error(runtime.run("kill", running, sig), T.UNKNOWN_SIGNAL.format(sig=sig))
    assert runtime.state(running)["status"] == "running" and pid_alive(pid)
    runtime.ok("delete", "--force", running)


def test_kill_stopped_container_fails(runtime: Runtime, running: str) -> None:
    runtime.ok("kill", running, "KILL")
    assert runtime.wait_status(running, "stopped") == "stopped"
    # CRI-O maps "container not running" to ErrNotFound: keep the words.
    assert_error(runtime.run("kill", running, "KILL"), T.KILL_NOT_RUNNING)
    assert_error(runtime.run("kill", running), T.KILL_NOT_RUNNING)
    runtime.ok("delete", running)


def test_delete_running_needs_force(runtime: Runtime, running: str) -> None:
    pid = runtime.state(running)["pid"]
    assert_error(runtime.run("delete", running), T.DELETE_RUNNING.format(id=running))
    assert runtime.state(running)["status"] == "running" and pid_alive(pid)
    res = runtime.run("delete", "--force", running)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res
    assert wait_gone([pid], 10) == [], "delete --force left the container's pid alive"
    assert_error(runtime.run("state", running), T.CONTAINER_NOT_EXIST)
    assert runtime.list_ids() == []


def test_start_twice_fails(runtime: Runtime, running: str) -> None:
    assert_error(runtime.run("start", running), T.START_RUNNING)
    assert runtime.state(running)["status"] == "running"
    runtime.ok("delete", "--force", running)


def test_start_stopped_fails(runtime: Runtime, running: str) -> None:
    runtime.ok("kill", running, "KILL")
    assert runtime.wait_status(running, "stopped") == "stopped"
    assert_error(runtime.run("start", running), T.START_STOPPED)
    assert runtime.state(running)["status"] == "stopped"
    runtime.ok("delete", running)


def test_delete_force_unknown_is_success(runtime: Runtime) -> None:
    """containerd and CRI-O treat "already gone" as done: runc exits 0 silently."""
    res = runtime.run("delete", "--force", "never-existed")
    assert (res.returncode, res.stdout, res.stderr) == (0, "", ""), res


def test_kill_signal_spellings(runtime: Runtime, running: str) -> None:
    """`kill ID 0` probes a live container; names with and without SIG are accepted."""
    for sig in ("0", "SIGCONT", "CONT", "18"):
        res = runtime.run("kill", running, sig)
        assert res.returncode == 0, res
    assert runtime.state(running)["status"] == "running"
    runtime.ok("kill", running, "SIGKILL")
    assert runtime.wait_status(running, "stopped") == "stopped"
    runtime.ok("delete", running)



def test_manager_sized_root_and_id(runtime: Runtime, short_tmp: Path, bundle) -> None:
    """Container managers use 64-hex-char ids and deep roots: containerd's shim passes
    --root /run/containerd/runc/k8s.io; CRI-O and podman use ids like this one.  A
    runtime keeping unix sockets under <root>/<id>/ must still work (sun_path is 108
    bytes)."""
    rt = Runtime(runtime.spec, root=short_tmp / "run/containerd/runc/k8s.io",
                 log=short_tmp / "deep-log.json")
    cid = "0123456789abcdef" * 4
    try:
        res = rt.run("run", "--bundle", str(bundle(["sh", "-c", "echo deep; exit 4"])), cid)
        assert (res.returncode, res.stdout, res.stderr) == (4, "deep\n", ""), res
        rt.ok("run", "--detach", "--bundle", str(bundle(SLEEP)), cid)
        assert rt.state(cid)["status"] == "running"
        assert rt.list_ids() == [cid]
        rt.ok("kill", cid, "KILL")
        assert rt.wait_status(cid, "stopped") == "stopped"
        rt.ok("delete", cid)
        assert rt.list_ids() == []
    finally:
        rt.force_delete_all()
