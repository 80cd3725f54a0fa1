"""Real conmon (/usr/bin/conmon) drives the runtime under test exactly as CRI-O does
(reference anchors-mission.md, section 7.1):

    conmon -b B -c ID --exit-dir D -l LOG -n NAME -P B/conmon-pidfile -p B/pidfile
           --persist-dir P -r RUNTIME --runtime-arg --root=R --socket-dir-path S -u ID
           --log-level debug       (env _OCI_SYNCPIPE, _OCI_STARTPIPE: pipe fd numbers)

conmon daemonizes, becomes a child subreaper, runs `RUNTIME --root=R create --bundle B
--pid-file B/pidfile ID`, sends {"pid": N} (or {"pid": -1, "message": ...}) on the sync
pipe, waits for that pid, writes its exit code (128+signal if killed) to D/ID, and logs
the container's stdout/stderr to LOG in the k8s-file format.  `start`, `kill` and
`delete` come from us, through the runtime's CLI, as CRI-O would send them.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import procs
from helpers.runtime import Runtime

pytestmark = pytest.mark.compat

CONMON = shutil.which("conmon") or "/usr/bin/conmon"
K8S_LINE = re.compile(r"^(\S+) (stdout|stderr) ([FP]) (.*)$")


@dataclass
class ConmonRun:
    cid: str
    bundle: Path
    exit_dir: Path
    persist_dir: Path
    log_path: Path
    conmon_log: Path
    sync: dict
    conmon_pid: int

    @property
    def exit_file(self) -> Path:
        return self.exit_dir / self.cid

    def wait_exit_code(self, timeout: float) -> int:
        assert procs.wait_until(self.exit_file.exists, timeout, interval=0.05), (
            f"conmon wrote no exit file within {timeout}s; conmon output:\n"
            f"{self.conmon_log.read_text()[-3000:]}")
        # conmon writes the file in one go, but be tolerant of seeing it before the write
        procs.wait_until(lambda: self.exit_file.read_text().strip() != "", 5)
        return int(self.exit_file.read_text().strip())

    def log_entries(self) -> list[tuple[str, str, str]]:
        """[(stream, partial flag, text)] from the k8s-file log."""
        out = []
        for line in self.log_path.read_text().splitlines():
            m = K8S_LINE.match(line)
            assert m, f"not a k8s-file log line: {line!r}"
            out.append((m.group(2), m.group(3), m.group(4)))
        return out


def read_sync(fd: int, timeout: float) -> dict:
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"no message on the sync pipe within {timeout}s (got {buf!r})"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    assert buf.strip(), "conmon closed the sync pipe without a message"
    return json.loads(buf.split(b"\n", 1)[0])


@pytest.fixture
def conmon(runtime: Runtime, short_tmp: Path) -> Iterator:
    if not os.access(CONMON, os.X_OK):
        pytest.skip("conmon not installed")
    started: list[ConmonRun] = []

    def launch(bundle: Path, cid: str) -> ConmonRun:
        d = short_tmp / f"conmon-{cid}"
        exit_dir, persist, socks = d / "exits", d / "persist", d / "s"
        for p in (exit_dir, persist, socks):
            p.mkdir(parents=True)
        log_path, conmon_log = d / "ctr.log", d / "conmon.out"
        sync_r, sync_w = os.pipe()
        start_r, start_w = os.pipe()
        argv = [
            CONMON, "-b", str(bundle), "-c", cid, "--exit-dir", str(exit_dir),
            "-l", str(log_path), "-n", f"k8s_{cid}", "-P", str(bundle / "conmon-pidfile"),
            "-p", str(bundle / "pidfile"), "--persist-dir", str(persist),
            "-r", runtime.binary, "--runtime-arg", f"--root={runtime.root}",
            "--socket-dir-path", str(socks), "-u", cid, "--log-level", "debug",
        ]
        # CRI-O puts the pipes at fds 3 and 4 (cmd.ExtraFiles); conmon only reads the
        # numbers from the environment, so pass them where they are.
        env = dict(os.environ, _OCI_SYNCPIPE=str(sync_w), _OCI_STARTPIPE=str(start_r))
        with conmon_log.open("wb") as out:
            proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, pass_fds=(sync_w, start_r),
            )
        os.close(sync_w)
        os.close(start_r)
        os.write(start_w, b"0")  # CRI-O: "conmon is in its cgroup, go"
        os.close(start_w)
        try:
            # The first conmon process exits once it has daemonized.
            proc.wait(timeout=30)
            sync = read_sync(sync_r, runtime.spec.op_timeout)
        finally:
            os.close(sync_r)
        pidfile = bundle / "conmon-pidfile"
        conmon_pid = int(pidfile.read_text()) if pidfile.exists() else -1
        run = ConmonRun(cid, bundle, exit_dir, persist, log_path, conmon_log, sync, conmon_pid)
        started.append(run)
        return run

    yield launch
    # A conmon that outlives its container is a leak; kill what remains.
    left = [r.conmon_pid for r in started if r.conmon_pid > 0 and procs.pid_alive(r.conmon_pid)]
    left = procs.wait_gone(left, 10)
    for pid in left:
        os.kill(pid, 9)
    assert not left, f"conmon still running after its container ended: {left}"


def test_exit_code_and_log(conmon, runtime: Runtime, bundle, new_id) -> None:
    cid = new_id()
    b = bundle(["sh", "-c", "echo hello-out; echo hello-err >&2; exit 3"])
    run = conmon(b, cid)
    assert run.sync.get("pid", -1) > 0, f"create failed under conmon: {run.sync}"
    pid = run.sync["pid"]
    assert int((b / "pidfile").read_text()) == pid
    assert run.conmon_pid > 0 and procs.pid_alive(run.conmon_pid)
    # The pid must be conmon's descendant (its child, conmon being the subreaper), or
    # conmon could not collect its exit status.
    assert procs.ppid_of(pid) == run.conmon_pid, (
        f"container pid {pid} has parent {procs.ppid_of(pid)}, not conmon {run.conmon_pid}")
    assert runtime.state(cid)["status"] == "created"

    runtime.ok("start", cid)
    assert run.wait_exit_code(runtime.spec.exit_timeout) == 3
    assert (run.persist_dir / "exit").read_text().strip() == "3"
    assert procs.wait_gone([run.conmon_pid], 10) == [], "conmon did not exit"
    entries = run.log_entries()
    assert ("stdout", "F", "hello-out") in entries, entries
    assert ("stderr", "F", "hello-err") in entries, entries
    assert runtime.wait_status(cid, "stopped") == "stopped"
    runtime.ok("delete", cid)


@pytest.mark.parametrize("sig", ["KILL", "9"])
def test_killed_container_is_137(conmon, runtime: Runtime, bundle, new_id, sig: str) -> None:
    cid = new_id()
    run = conmon(bundle(["sleep", "1000"]), cid)
    assert run.sync.get("pid", -1) > 0, run.sync
    runtime.ok("start", cid)
    assert runtime.state(cid)["status"] == "running"
    assert not run.exit_file.exists()
    runtime.ok("kill", cid, sig)
    assert run.wait_exit_code(runtime.spec.exit_timeout) == 137
    assert runtime.wait_status(cid, "stopped") == "stopped"
    runtime.ok("delete", cid)


def test_stdout_logged_while_running(conmon, runtime: Runtime, bundle, new_id) -> None:
    """Output reaches conmon's log as it is produced, not only at exit."""
    cid = new_id()
    run = conmon(bundle(["sh", "-c", "echo first-line; exec sleep 1000"]), cid)
    assert run.sync.get("pid", -1) > 0, run.sync
    runtime.ok("start", cid)
    assert procs.wait_until(
        lambda: run.log_path.exists() and ("stdout", "F", "first-line") in run.log_entries(),
        runtime.spec.exit_timeout), "first-line never reached conmon's log"
    runtime.ok("delete", "--force", cid)
    assert run.wait_exit_code(runtime.spec.exit_timeout) == 137


def test_create_failure_reported_on_sync_pipe(conmon, runtime: Runtime, bundle,
                                              new_id) -> None:
    """A failed create: conmon sends {"pid": -1, "message": <runtime's stderr>}; CRI-O
    shows that message to the user (and podman maps these words to exit 127)."""
    cid = new_id()
    run = conmon(bundle(["no-such-command"]), cid)
    assert run.sync.get("pid") == -1, run.sync
    assert "executable file not found" in run.sync.get("message", ""), run.sync
    assert not (run.bundle / "pidfile").exists()
    assert runtime.list_ids() == []
