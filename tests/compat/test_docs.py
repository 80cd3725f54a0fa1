"""docs/integration.md, followed as written: its podman and containerd blocks run as is.

The blocks tagged `<!-- test: NAME -->` are taken verbatim; only vmrt's path
(/usr/local/bin/vmrt in the doc) is replaced by the runtime under test, and the image
the doc names (docker.io/library/busybox:latest) is a local busybox-static image
imported under that name (no registry is reachable here).

What the test adds is only what keeps it private and off the host's network:
* podman: --root/--runroot/--tmpdir/--storage-driver vfs, cgroupfs, file events,
  CONTAINERS_STORAGE_CONF, and `--network none --cidfile F` after `run`; the
  containers.conf given in CONTAINERS_CONF is the doc's block plus file locks (and
  runc's ulimits) appended to its `[engine]`/`[containers]` tables.
* containerd: a private daemon (root, state, sockets under a temporary directory, in a
  private mount namespace) whose config.toml is the doc's file between the test's
  private settings, with the CRI plugin enabled: the test checks the running plugin took
  the entry. No CRI client (crictl) exists on Debian 12, so the entry drives no pod;
  the doc's `ctr run --runc-binary` line runs a container through the same runc v2
  shim and the same BinaryName option, with `--address/--namespace` and `--fifo-dir`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import procs
from helpers.docs import tagged_blocks
from helpers.oci_image import rootfs_tar, write_oci_archive
from helpers.runtime import RuntimeSpec, run_to_files

pytestmark = pytest.mark.compat

DOC = "integration.md"
DOC_BINARY = "/usr/local/bin/vmrt"
DOC_IMAGE = "docker.io/library/busybox:latest"
PODMAN = shutil.which("podman")
CONMON = shutil.which("conmon")
CONTAINERD = shutil.which("containerd")
CTR = shutil.which("ctr")
HELPER = Path(__file__).resolve().parent.parent / "helpers" / "private_containerd.py"
ULIMITS = 'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]'  # see MACHINE.md


def block(name: str, binary: str) -> str:
    """The doc's block `name`, with vmrt's path replaced by `binary`."""
    text = tagged_blocks(DOC)[name].text
    assert DOC_BINARY in text, f"{name}: the doc no longer names {DOC_BINARY}"
    return text.replace(DOC_BINARY, binary)


def command(name: str, binary: str) -> list[str]:
    lines = [line for line in block(name, binary).splitlines() if line.strip()]
    assert len(lines) == 1, f"{name}: expected one command line, got {lines}"
    return shlex.split(lines[0])


def insert_after(argv: list[str], word: str, extra: list[str]) -> list[str]:
    at = argv.index(word) + 1
    return [*argv[:at], *extra, *argv[at:]]


def timeout_for(runtime: RuntimeSpec) -> float:
    return 240.0 if runtime.is_vmrt else 60.0


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vd", dir="/tmp"))
    yield path
    left = procs.procs_mentioning(str(path))
    procs.kill_procs(left)
    mounts = procs.mounts_under(path)
    for mnt in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mnt], check=False, capture_output=True)
    if not procs.mounts_under(path):
        shutil.rmtree(path, ignore_errors=True)
    assert not left, f"processes left behind: {left}"
    assert not mounts, f"mounts left behind: {mounts}"


# -- podman ----------------------------------------------------------------------------------

class Podman:
    def __init__(self, base: Path, runtime: RuntimeSpec, conf_text: str) -> None:
        self.base = base
        self.runtime = runtime
        for d in ("root", "runroot", "tmp"):
            (base / d).mkdir(exist_ok=True)
        conf = base / "containers.conf"
        conf.write_text(conf_text)
        tomllib.loads(conf_text)  # what the test added must keep the file valid
        storage = base / "storage.conf"
        storage.write_text(f'[storage]\ndriver = "vfs"\nrunroot = "{base}/runroot"\n'
                           f'graphroot = "{base}/root"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf),
                    "CONTAINERS_STORAGE_CONF": str(storage)}
        self.env.pop("CONTAINER_HOST", None)
        self.cids: list[str] = []

    def private_flags(self) -> list[str]:
        b = self.base
        return ["--root", f"{b}/root", "--runroot", f"{b}/runroot", "--tmpdir", f"{b}/tmp",
                "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
                "--events-backend", "file"]

    def doc_argv(self, argv: list[str], cidfile: Path) -> list[str]:
        """A documented `podman … run …` line made private (see the module's docstring)."""
        assert argv[0] == "podman" and "run" in argv, argv
        argv = [PODMAN or "podman", *self.private_flags(), *argv[1:]]
        return insert_after(argv, "run", ["--network", "none", "--cidfile", str(cidfile)])

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_to_files([PODMAN or "podman", *self.private_flags(), *args], env=self.env,
                            timeout=timeout_for(self.runtime))

    def run(self, argv: list[str], cidfile: Path) -> subprocess.CompletedProcess[str]:
        res = run_to_files(argv, env=self.env, timeout=timeout_for(self.runtime))
        if cidfile.exists():
            self.cids.append(cidfile.read_text().strip())
        return res

    def import_busybox(self, rootfs: Path) -> None:
        tar = rootfs_tar(rootfs, self.base / "busybox.tar")
        res = self("import", "--quiet", str(tar), DOC_IMAGE)
        assert res.returncode == 0, res
        tar.unlink()

    def cleanup(self) -> list[str]:
        """Remove everything; the ids the runtime still holds in its default root."""
        self("rm", "--all", "--force", "--time", "0")
        self("rmi", "--all", "--force")
        res = run_to_files([self.runtime.binary, "list", "-q"], timeout=timeout_for(self.runtime))
        left = sorted(set(res.stdout.split()) & set(self.cids))
        for cid in left:
            run_to_files([self.runtime.binary, "delete", "--force", cid],
                         timeout=timeout_for(self.runtime))
        return left


def private_conf(doc_conf: str, runtime: RuntimeSpec) -> str:
    """The doc's containers.conf with the test's own settings appended to its tables."""
    headers = re.findall(r"^\[([^\]]+)\]", doc_conf, re.M)
    assert headers and headers[-1] == "engine", \
        f"the doc's containers.conf should end with its [engine] table: {headers}"
    assert "containers" not in headers
    conf = doc_conf.rstrip("\n") + '\nlock_type = "file"\n'
    if not runtime.is_vmrt:
        conf += f"\n[containers]\n{ULIMITS}\n"
    return conf


@pytest.fixture
def podman_ready(runtime_spec: RuntimeSpec) -> RuntimeSpec:
    if PODMAN is None or CONMON is None:
        pytest.skip("podman or conmon not installed")
    return runtime_spec


def test_podman_command_line(podman_ready: RuntimeSpec, busybox_rootfs: Path, base: Path) -> None:
    """`podman --runtime <path> run …` as documented, with no containers.conf entry."""
    rt = podman_ready
    conf = '[engine]\nlock_type = "file"\n' + ("" if rt.is_vmrt else f"[containers]\n{ULIMITS}\n")
    pm = Podman(base, rt, conf)
    pm.import_busybox(busybox_rootfs)
    cidfile = base / "cid"
    try:
        res = pm.run(pm.doc_argv(command("podman-command", rt.binary), cidfile), cidfile)
        assert (res.returncode, res.stdout) == (0, "hi\n"), res
        assert pm("ps", "-a", "-q").stdout == "", "--rm left the container"
    finally:
        left = pm.cleanup()
    assert pm.cids and not left, f"runtime state left in its default root: {left}"


def test_podman_containers_conf(podman_ready: RuntimeSpec, busybox_rootfs: Path, base: Path) -> None:
    """The doc's containers.conf names the runtime `vmrt`; `podman --runtime vmrt` runs it,
    and podman asks it for JSON logs (runtime_supports_json)."""
    rt = podman_ready
    conf = private_conf(block("podman-containers.conf", rt.binary), rt)
    assert tomllib.loads(conf)["engine"]["runtimes"]["vmrt"] == [rt.binary]
    pm = Podman(base, rt, conf)
    pm.import_busybox(busybox_rootfs)
    try:
        cidfile = base / "cid1"
        res = pm.run(pm.doc_argv(["podman", "--runtime", "vmrt", "run", "--rm", "busybox",
                                  "sh", "-c", "echo from-vmrt; exit 7"], cidfile), cidfile)
        assert res.returncode == 7 and res.stdout == "from-vmrt\n", res

        # An error: podman passes `--log-format json --log <userdata>/oci-log` only to
        # the runtimes of runtime_supports_json (it writes no oci-log otherwise), and shows
        # the runtime's message.
        cidfile = base / "cid2"
        res = pm.run(pm.doc_argv(["podman", "--runtime", "vmrt", "run", "busybox",
                                  "/no/such/program"], cidfile), cidfile)
        assert res.returncode != 0
        assert "/no/such/program" in res.stderr, f"the runtime's error did not reach the user: {res}"
        cid = pm.cids[-1]
        oci_log = base / "runroot" / "vfs-containers" / cid / "userdata" / "oci-log"
        assert oci_log.is_file(), "podman did not ask the runtime named vmrt for JSON logs"
        records = [json.loads(line) for line in oci_log.read_text().splitlines()]
        errors = [r for r in records if r["level"] == "error"]
        assert errors and "/no/such/program" in errors[-1]["msg"], records
        if rt.is_vmrt:
            assert all(r["container"] == cid for r in records), records
    finally:
        left = pm.cleanup()
    assert not left, f"runtime state left in its default root: {left}"


# -- containerd ------------------------------------------------------------------------------

class PrivateContainerd:
    namespace = "docs"

    def __init__(self, base: Path, runtime: RuntimeSpec, doc_config: str) -> None:
        self.base = base
        self.runtime = runtime
        self.sock = base / "c.sock"
        self.fifo = base / "fifo"
        self.fifo.mkdir()
        (base / "tmp").mkdir()
        self.config = base / "config.toml"
        self.log = base / "containerd.log"
        # The doc's file is a whole config.toml: the test's root keys go before it, its
        # tables after it (TOML wants root keys first).
        before = f'root = "{base}/root"\nstate = "{base}/state"\ntemp = "{base}/tmp"\n'
        after = (
            f'[grpc]\n  address = "{self.sock}"\n'
            f'[ttrpc]\n  address = "{self.sock}.ttrpc"\n'
            '[debug]\n  address = ""\n  level = "info"\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{base}/opt"\n'
            # The CRI plugin must not read the host's CNI set-up.
            '[plugins."io.containerd.grpc.v1.cri".cni]\n'
            f'  bin_dir = "{base}/cni-bin"\n  conf_dir = "{base}/cni-conf"\n'
        )
        text = before + "\n" + doc_config.rstrip("\n") + "\n\n" + after
        tomllib.loads(text)
        self.config.write_text(text)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert CONTAINERD
        with self.log.open("wb") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, str(HELPER), CONTAINERD, "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"containerd died: {self.log.read_text()[-3000:]}")
            return self.sock.exists() and self.ctr("version").returncode == 0

        assert procs.wait_until(ready, 60, interval=0.05), self.log.read_text()[-3000:]

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert CTR
        return run_to_files([CTR, "--address", str(self.sock), "--namespace", self.namespace,
                             *args], timeout=timeout_for(self.runtime))

    def doc_argv(self, argv: list[str]) -> list[str]:
        assert argv[0] == "ctr" and "run" in argv, argv
        argv = [CTR or "ctr", "--address", str(self.sock), "--namespace", self.namespace,
                *argv[1:]]
        return insert_after(argv, "run", ["--fifo-dir", str(self.fifo)])

    def shims(self) -> list[procs.Proc]:
        return procs.procs_mentioning(str(self.sock), environ=False)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for cid in self.ctr("task", "ls", "-q").stdout.split():
                self.ctr("task", "kill", "--signal", "SIGKILL", cid)
                self.ctr("task", "delete", "--force", cid)
            for cid in self.ctr("container", "ls", "-q").stdout.split():
                self.ctr("container", "rm", cid)
        procs.wait_until(lambda: not self.shims(), 30, interval=0.05)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_containerd_cri_entry_and_ctr_line(runtime_spec: RuntimeSpec, busybox_rootfs: Path,
                                           base: Path) -> None:
    if CONTAINERD is None or CTR is None:
        pytest.skip("containerd / ctr not installed")
    rt = runtime_spec
    cd = PrivateContainerd(base, rt, block("containerd-config.toml", rt.binary))
    archive = write_oci_archive(busybox_rootfs, base / "image.tar", name=DOC_IMAGE)
    try:
        cd.start()
        # The running CRI plugin loaded the doc's runtime entry (it logs its whole config).
        started = [line for line in cd.log.read_text().splitlines()
                   if "Start cri plugin with config" in line]
        assert started, cd.log.read_text()[-3000:]
        entry = re.search(r"vmrt:\{Type:(\S+) .*?Options:map\[(.*?)\]", started[0])
        assert entry, f"the CRI plugin has no runtime vmrt: {started[0][:3000]}"
        assert entry.group(1) == "io.containerd.runc.v2"
        assert f"BinaryName:{rt.binary}" in entry.group(2)
        assert "PrivilegedWithoutHostDevices:true" in started[0]

        imported = cd.ctr("images", "import", str(archive))
        assert DOC_IMAGE in imported.stdout, imported
        res = run_to_files(cd.doc_argv(command("ctr-command", rt.binary)),
                           timeout=timeout_for(rt))
        assert (res.returncode, res.stdout) == (0, "hi\n"), res
        assert cd.ctr("container", "ls", "-q").stdout == "", "--rm left the container"
    finally:
        cd.stop()
    left = cd.shims()
    procs.kill_procs(left)
    assert not left, f"shims left behind: {left}"
