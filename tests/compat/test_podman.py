"""podman 4 drives the runtime under test (through conmon), as users run it.

Everything podman keeps is private to this module: --root/--runroot/--tmpdir under a
temporary directory, a private containers.conf (CONTAINERS_CONF) and storage.conf
(CONTAINERS_STORAGE_CONF), file locks and file events.  The real /var/lib/containers is
never touched (no `podman system reset`).  podman passes no --root to a rootful runtime,
so the runtime keeps its state in its default root (/run/runc, /run/vmrt): teardown
checks that none of this module's container ids is left there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import procs
from helpers.oci_image import rootfs_tar
from helpers.runtime import RuntimeSpec, run_to_files

pytestmark = pytest.mark.compat

PODMAN = shutil.which("podman")
IMAGE = "localhost/vmrt-busybox:test"
TIMEOUT_RUNC = 60.0
TIMEOUT_VMRT = 240.0


class Podman:
    def __init__(self, base: Path, runtime: RuntimeSpec) -> None:
        self.base = base
        self.runtime = runtime
        self.root = base / "root"
        self.runroot = base / "runroot"
        self.tmpdir = base / "tmp"
        self.conf = base / "containers.conf"
        self.storage_conf = base / "storage.conf"
        self.timeout = TIMEOUT_VMRT if runtime.is_vmrt else TIMEOUT_RUNC
        self.container_ids: set[str] = set()
        self.env = dict(os.environ)
        self.env.update(CONTAINERS_CONF=str(self.conf),
                        CONTAINERS_STORAGE_CONF=str(self.storage_conf))
        self.env.pop("CONTAINER_HOST", None)

    def write_config(self) -> None:
        for d in (self.root, self.runroot, self.tmpdir):
            d.mkdir(parents=True, exist_ok=True)
        names = sorted({"runc", "crun", "vmrt", Path(self.runtime.binary).name})
        self.conf.write_text(
            "[containers]\n"
            # The machine's bounding set lacks CAP_SYS_RESOURCE: podman's default rlimits
            # (nofile/nproc 1048576) cannot be set by runc here: stay low (uid 0 is
            # exempt from RLIMIT_NPROC anyway).
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            'lock_type = "file"\n'
            f'tmp_dir = "{self.tmpdir}"\n'
            f"runtime_supports_json = {json.dumps(names)}\n"
            # What `podman pod create` runs the infra container with (it has no --runtime).
            f'runtime = "{"vmrt" if self.runtime.is_vmrt else "undertest"}"\n'
            "[engine.runtimes]\n"
            f'vmrt = ["{Path(sys.executable).parent / "vmrt"}"]\n'
            f'undertest = ["{self.runtime.binary}"]\n'
        )
        self.storage_conf.write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'runroot = "{self.runroot}"\n'
            f'graphroot = "{self.root}"\n'
        )

    def argv(self, *args: str) -> list[str]:
        assert PODMAN
        return [PODMAN, "--root", str(self.root), "--runroot", str(self.runroot),
                "--tmpdir", str(self.tmpdir), "--cgroup-manager", "cgroupfs",
                "--events-backend", "file", "--storage-driver", "vfs", *args]

    def __call__(self, *args: str, timeout: float | None = None,
                 input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_to_files(self.argv(*args), input=input, env=self.env,
                            timeout=timeout or self.timeout)

    def ok(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:
        res = self(*args, **kw)
        assert res.returncode == 0, f"podman {' '.join(args)} -> {res.returncode}\n" \
            f"stdout: {res.stdout!r}\nstderr: {res.stderr!r}"
        return res

    def run_args(self, *extra: str) -> list[str]:
        """`podman run` with the runtime under test and no network."""
        return ["run", "--runtime", self.runtime.binary, "--network", "none", *extra]

    def inspect(self, cid: str) -> dict:
        data = json.loads(self.ok("container", "inspect", cid).stdout)
        assert isinstance(data, list) and len(data) == 1
        return data[0]

    def all_ids(self) -> list[str]:
        return self.ok("ps", "-a", "-q", "--no-trunc").stdout.split()

    def runtime_ids(self) -> list[str]:
        """Ids in the runtime's default root (podman gives it no --root)."""
        res = run_to_files([self.runtime.binary, "list", "-q"], timeout=self.timeout)
        return res.stdout.split() if res.returncode == 0 else []


@pytest.fixture(scope="module")
def podman(runtime_spec: RuntimeSpec, busybox_rootfs: Path) -> Iterator[Podman]:
    if PODMAN is None or shutil.which("conmon") is None:
        pytest.skip("podman or conmon not installed")
    base = Path(tempfile.mkdtemp(prefix="vp", dir="/tmp"))
    pm = Podman(base, runtime_spec)
    pm.write_config()
    tar = rootfs_tar(busybox_rootfs, base / "busybox.tar")
    pm.ok("import", "--quiet", str(tar), IMAGE)
    tar.unlink()
    yield pm
    pm("rm", "--all", "--force", "--time", "0")
    pm("rmi", "--all", "--force")
    left = procs.procs_mentioning(str(base))
    procs.kill_procs(left)
    mounts = procs.mounts_under(base)
    for mnt in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mnt], check=False, capture_output=True)
    if not procs.mounts_under(base):
        shutil.rmtree(base, ignore_errors=True)
    assert not left, f"podman module left processes: {left}"
    assert not mounts, f"podman module left mounts: {mounts}"


@pytest.fixture
def pm(podman: Podman, tmp_path: Path) -> Iterator[Podman]:
    """Per test: afterwards no container, no conmon, no mount, no runtime state."""
    podman.container_ids = set()
    yield podman
    stray = podman.all_ids()
    podman("rm", "--all", "--force", "--time", "0")
    left: list[procs.Proc] = []

    def gone() -> bool:
        left[:] = procs.procs_mentioning(str(podman.base))
        return not left

    procs.wait_until(gone, 30.0 if podman.runtime.is_vmrt else 10.0, interval=0.05)
    procs.kill_procs(left)
    mounts = procs.mounts_under(podman.root) + procs.mounts_under(podman.runroot)
    ours = podman.container_ids | set(stray)
    in_runtime = sorted(set(podman.runtime_ids()) & ours)
    for cid in in_runtime:
        run_to_files([podman.runtime.binary, "delete", "--force", cid],
                     timeout=podman.timeout)
    assert not stray, f"test left podman containers: {stray}"
    assert not left, "processes left behind:\n" + "\n".join(map(str, left))
    assert not mounts, f"mounts left behind: {mounts}"
    assert not in_runtime, f"runtime state left in its default root for {in_runtime}"


def cidfile(tmp_path: Path, name: str = "cid") -> Path:
    return tmp_path / name


def remember(pm: Podman, path: Path) -> str:
    cid = path.read_text().strip()
    assert len(cid) == 64, cid
    pm.container_ids.add(cid)
    return cid


def test_run_echo(pm: Podman, tmp_path: Path) -> None:
    cf = cidfile(tmp_path)
    res = pm(*pm.run_args("--rm", "--cidfile", str(cf)), IMAGE, "echo", "hi")
    assert (res.returncode, res.stdout) == (0, "hi\n"), res
    remember(pm, cf)
    assert pm.all_ids() == [], "--rm left the container"


def test_exit_code(pm: Podman, tmp_path: Path) -> None:
    cf = cidfile(tmp_path)
    res = pm(*pm.run_args("--rm", "--cidfile", str(cf)), IMAGE, "sh", "-c", "exit 3")
    assert res.returncode == 3, res
    remember(pm, cf)


def test_stdout_stderr_and_stdin(pm: Podman, tmp_path: Path) -> None:
    cf = cidfile(tmp_path)
    res = pm(*pm.run_args("--rm", "-i", "--cidfile", str(cf)), IMAGE,
             "sh", "-c", "cat; echo to-stderr >&2", input="piped-in\n")
    assert res.returncode == 0, res
    assert res.stdout == "piped-in\n", res
    assert "to-stderr" in res.stderr and "to-stderr" not in res.stdout, res
    remember(pm, cf)


def test_detached_ps_stop_rm(pm: Podman, tmp_path: Path) -> None:
    cf = cidfile(tmp_path)
    # TERM reaches the container (pid 1 with a handler) and it exits 7 on it.
    script = "trap 'exit 7' TERM; while :; do sleep 0.1; done"
    res = pm.ok(*pm.run_args("-d", "--cidfile", str(cf)), IMAGE, "sh", "-c", script)
    cid = remember(pm, cf)
    assert res.stdout.strip() == cid

    ps = pm.ok("ps", "--no-trunc", "--format", "{{.ID}} {{.Status}}").stdout.splitlines()
    assert any(line.startswith(cid + " Up") for line in ps), ps
    info = pm.inspect(cid)
    assert info["State"]["Status"] == "running", info["State"]
    assert info["OCIRuntime"] in (pm.runtime.binary, Path(pm.runtime.binary).name)
    pid = info["State"]["Pid"]
    assert pid > 0 and procs.pid_alive(pid)

    pm.ok("stop", "-t", "2", cid)
    state = pm.inspect(cid)["State"]
    assert state["Status"] == "exited", state
    assert state["ExitCode"] == 7, f"TERM did not reach the container's handler: {state}"
    assert not procs.pid_alive(pid)
    assert cid not in pm.ok("ps", "-q", "--no-trunc").stdout.split()

    pm.ok("rm", cid)
    assert pm.all_ids() == []


def test_stop_escalates_to_kill(pm: Podman, tmp_path: Path) -> None:
    """`sleep` as pid 1 ignores TERM: podman stop must fall back to KILL -> 137."""
    cf = cidfile(tmp_path)
    pm.ok(*pm.run_args("-d", "--cidfile", str(cf)), IMAGE, "sleep", "1000")
    cid = remember(pm, cf)
    pm.ok("stop", "-t", "1", cid)
    state = pm.inspect(cid)["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 137), state
    pm.ok("rm", cid)


def test_killed_by_sigkill_is_137(pm: Podman, tmp_path: Path) -> None:
    # Without a pid namespace sh is not an init, so `kill -9 $$` really kills it.
    cf = cidfile(tmp_path)
    res = pm(*pm.run_args("--rm", "--pid", "host", "--cidfile", str(cf)), IMAGE,
             "sh", "-c", "kill -9 $$; echo survived")
    assert res.returncode == 137, res
    assert "survived" not in res.stdout
    remember(pm, cf)


def test_pid1_cannot_sigkill_itself(pm: Podman, tmp_path: Path) -> None:
    """In its own pid namespace the program is init: a signal it sends itself without a
    handler is dropped, even SIGKILL.  runc: exit 0.  vmrt must give the container a pid
    namespace too when the spec asks for one, so the same."""
    cf = cidfile(tmp_path)
    res = pm(*pm.run_args("--rm", "--cidfile", str(cf)), IMAGE,
             "sh", "-c", "kill -9 $$; echo survived; exit 0")
    assert (res.returncode, res.stdout) == (0, "survived\n"), res
    remember(pm, cf)


def test_rm_force_running(pm: Podman, tmp_path: Path) -> None:
    cf = cidfile(tmp_path)
    pm.ok(*pm.run_args("-d", "--cidfile", str(cf)), IMAGE, "sleep", "1000")
    cid = remember(pm, cf)
    info = pm.inspect(cid)
    pid, conmon = info["State"]["Pid"], info["State"]["ConmonPid"]
    assert procs.pid_alive(pid) and procs.pid_alive(conmon)
    pm.ok("rm", "--force", "--time", "0", cid)
    assert pm.all_ids() == []
    assert procs.wait_gone([pid, conmon], 10) == []
    assert cid not in pm.runtime_ids()
