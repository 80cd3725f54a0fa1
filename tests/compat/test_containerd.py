"""containerd 1.6 + its runc v2 shim drive the runtime under test (`ctr --runc-binary`).

A private containerd per module: its root, state, sockets and config under a temporary
directory, running in a private mount namespace with a tmpfs on /run/containerd (the v2
shims put their sockets under /run/containerd/s whatever the config says), started by
tests/helpers/private_containerd.py.  `ctr` talks to it over the private socket from the
host namespace; its stdio FIFOs go to a --fifo-dir under the temporary directory (the
default, /run/containerd/fifo, would be the host's, which the shim cannot see).

The shim calls the runtime as `<runtime> --root /run/containerd/runc/<ns> --log
<bundle>/log.json --log-format json create --bundle ... --pid-file ... <id>`; that root
lives in the private namespace: the tests list it with `nsenter --mount`.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import procs
from helpers.oci_image import write_oci_archive
from helpers.runtime import RuntimeSpec, run_to_files

pytestmark = pytest.mark.compat

CONTAINERD = shutil.which("containerd")
CTR = shutil.which("ctr")
HELPER = Path(__file__).resolve().parent.parent / "helpers" / "private_containerd.py"
NAMESPACE = "test"
IMAGE = "docker.io/library/vmrt-busybox:test"


class Containerd:
    def __init__(self, base: Path, runtime: RuntimeSpec) -> None:
        self.base = base
        self.runtime = runtime
        self.sock = base / "c.sock"
        self.fifo_dir = base / "fifo"
        self.config = base / "config.toml"
        self.log = base / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.timeout = 240.0 if runtime.is_vmrt else 60.0

    def write_config(self) -> None:
        b = self.base
        self.fifo_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "version = 2\n"
            f'root = "{b}/root"\n'
            f'state = "{b}/state"\n'
            f'temp = "{b}/tmp"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.sock}"\n'
            "[ttrpc]\n"
            f'  address = "{self.sock}.ttrpc"\n'
            "[debug]\n"
            '  address = ""\n'
            '  level = "info"\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f'  path = "{b}/opt"\n'
        )
        (b / "tmp").mkdir(exist_ok=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def private_path(self, path: str) -> Path:
        """`path` as containerd's mount namespace sees it."""
        return Path(f"/proc/{self.pid}/root") / path.lstrip("/")

    def start(self) -> None:
        assert CONTAINERD
        logf = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPER), CONTAINERD, "--config", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
        )
        logf.close()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"containerd died: {self.log.read_text()[-3000:]}")
            return self.sock.exists() and self.ctr("version", timeout=10).returncode == 0

        assert procs.wait_until(ready, 30, interval=0.05), self.log.read_text()[-3000:]

    def ctr(self, *args: str, timeout: float | None = None
            ) -> subprocess.CompletedProcess[str]:
        assert CTR
        return run_to_files([CTR, "--address", str(self.sock), "--namespace", NAMESPACE,
                             *args], timeout=timeout or self.timeout)

    def ok(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:
        res = self.ctr(*args, **kw)
        assert res.returncode == 0, f"ctr {' '.join(args)} -> {res.returncode}\n" \
            f"stdout: {res.stdout!r}\nstderr: {res.stderr!r}"
        return res

    def run_args(self, *extra: str) -> list[str]:
        return ["run", "--fifo-dir", str(self.fifo_dir), "--runc-binary",
                self.runtime.binary, *extra]

    def tasks(self) -> dict[str, str]:
        """{container id: STATUS} from `ctr task ls`."""
        out = self.ok("task", "ls").stdout.splitlines()[1:]
        return {f[0]: f[2] for f in (line.split() for line in out) if len(f) >= 3}

    def containers(self) -> list[str]:
        return self.ok("container", "ls", "-q").stdout.split()

    def shims(self) -> list[procs.Proc]:
        return procs.procs_mentioning(str(self.sock), environ=False)

    def task_mounts(self) -> list[str]:
        return procs.mounts_under("/run/containerd/io.containerd.runtime.v2.task",
                                  mountinfo=f"/proc/{self.pid}/mountinfo")

    def runtime_state(self) -> list[str]:
        """`<runtime> --root /run/containerd/runc/<ns> list -q`, run in containerd's mount
        namespace: the containers the runtime still knows where the shim put them."""
        root = f"/run/containerd/runc/{NAMESPACE}"
        if not self.private_path(root).is_dir():
            return []
        res = run_to_files(["nsenter", "--target", str(self.pid), "--mount", "--",
                            self.runtime.binary, "--root", root, "list", "-q"],
                           timeout=self.timeout)
        assert res.returncode == 0, f"runtime list in containerd's namespace: {res}"
        return sorted(res.stdout.split())

    def stop(self) -> list[procs.Proc]:
        for cid in list(self.tasks()) if self.proc and self.proc.poll() is None else []:
            self.ctr("task", "kill", "--signal", "SIGKILL", cid, timeout=30)
            self.ctr("task", "delete", "--force", cid, timeout=30)
        for cid in self.containers() if self.proc and self.proc.poll() is None else []:
            self.ctr("container", "rm", cid, timeout=30)
        shims = self.shims()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        left = shims + self.shims()
        procs.kill_procs(left)
        procs.wait_gone([p.pid for p in left], 10)
        return left


@pytest.fixture(scope="module")
def containerd(runtime_spec: RuntimeSpec, busybox_rootfs: Path) -> Iterator[Containerd]:
    if CONTAINERD is None or CTR is None:
        pytest.skip("containerd / ctr not installed")
    base = Path(tempfile.mkdtemp(prefix="vc", dir="/tmp"))
    cd = Containerd(base, runtime_spec)
    cd.write_config()
    archive = write_oci_archive(busybox_rootfs, base / "image.tar", name=IMAGE)
    try:
        cd.start()
        res = cd.ok("images", "import", str(archive))
        assert IMAGE in res.stdout, res
        archive.unlink()
        yield cd
    finally:
        left = cd.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert not [p for p in left if "containerd-shim" in p.cmdline], \
        f"shims outlived their tasks: {left}"


@pytest.fixture
def ctrd(containerd: Containerd) -> Iterator[Containerd]:
    """Per test: afterwards no task, no container, no shim, no rootfs mount and no runtime
    state in the shim's --root."""
    yield containerd
    cd = containerd
    tasks, containers = cd.tasks(), cd.containers()
    for cid in tasks:
        cd.ctr("task", "kill", "--signal", "SIGKILL", cid)
        cd.ctr("task", "delete", "--force", cid)
    for cid in containers:
        cd.ctr("container", "rm", cid)
    left: list[procs.Proc] = []

    def gone() -> bool:
        left[:] = cd.shims()
        return not left

    procs.wait_until(gone, 30.0 if cd.runtime.is_vmrt else 10.0, interval=0.05)
    procs.kill_procs(left)
    mounts = cd.task_mounts()
    state = cd.runtime_state()
    assert not tasks, f"test left tasks: {tasks}"
    assert not containers, f"test left containers: {containers}"
    assert not left, "shims left behind:\n" + "\n".join(map(str, left))
    assert not mounts, f"rootfs mounts left in containerd's namespace: {mounts}"
    assert not state, f"runtime state left in the shim's --root: {state}"


def wait_task(cd: Containerd, name: str, want: str, timeout: float) -> str | None:
    seen: list[str | None] = [None]

    def pred() -> bool:
        seen[0] = cd.tasks().get(name)
        return seen[0] == want

    procs.wait_until(pred, timeout, interval=0.05)
    return seen[0]


def test_run_echo(ctrd: Containerd) -> None:
    res = ctrd.ctr(*ctrd.run_args("--rm"), IMAGE, "echo-hi", "echo", "hi")
    assert (res.returncode, res.stdout) == (0, "hi\n"), res
    assert ctrd.containers() == []


def test_exit_code_propagates(ctrd: Containerd) -> None:
    res = ctrd.ctr(*ctrd.run_args("--rm"), IMAGE, "exit-3", "sh", "-c", "exit 3")
    assert res.returncode == 3, res


def test_stdout_and_stderr_apart(ctrd: Containerd) -> None:
    res = ctrd.ctr(*ctrd.run_args("--rm"), IMAGE, "streams",
                   "sh", "-c", "echo to-stdout; echo to-stderr >&2")
    assert res.returncode == 0, res
    assert res.stdout == "to-stdout\n", res
    assert "to-stderr" in res.stderr and "to-stderr" not in res.stdout, res


def test_detached_kill_delete(ctrd: Containerd) -> None:
    name = "detached"
    ctrd.ok(*ctrd.run_args("--detach"), IMAGE, name, "sleep", "1000")
    assert wait_task(ctrd, name, "RUNNING", 30) == "RUNNING"
    pid = int(ctrd.ok("task", "ls").stdout.split(name, 1)[1].split()[0])
    assert pid > 0 and procs.pid_alive(pid)
    assert name in ctrd.runtime_state(), "the runtime keeps no state where the shim said"

    ctrd.ok("task", "kill", "--signal", "SIGKILL", name)
    assert wait_task(ctrd, name, "STOPPED", ctrd.runtime.exit_timeout) == "STOPPED"
    assert procs.wait_gone([pid], 10) == []
    res = ctrd.ok("task", "delete", name)
    assert "137" in res.stdout + res.stderr, f"exit status of the killed task: {res}"
    assert name not in ctrd.tasks()
    ctrd.ok("container", "rm", name)
    assert ctrd.containers() == []


def test_task_exit_status_reported(ctrd: Containerd) -> None:
    """`ctr task delete` of a task that exited on its own reports its status."""
    name = "exits-5"
    ctrd.ok(*ctrd.run_args("--detach"), IMAGE, name, "sh", "-c", "exit 5")
    assert wait_task(ctrd, name, "STOPPED", ctrd.runtime.exit_timeout) == "STOPPED"
    res = ctrd.ok("task", "delete", name)
    assert "exit code 5" in res.stdout + res.stderr, res
    ctrd.ok("container", "rm", name)
