"""CRI-O's runtime calls for a pod of two containers, replayed through real conmon.

CRI-O is not packaged for Debian 12; conmon is.  This test plays CRI-O (cri-o
internal/oci/runtime_oci.go, server/sandbox_run_linux.go, server/container_create_linux.go)
around the real conmon, with the exact argv, environment and pipes CRI-O uses:

1. RunPodSandbox: the pod's namespaces are pinned first (CRI-O's `pinns` bind-mounts
   net, ipc and uts namespace files; here `unshare --net=F --ipc=F --uts=F`), CNI ADD
   runs on the pinned netns (the real bridge + host-local plugins in a private lab,
   tests/helpers/netlab.py), a tmpfs is the pod's shm.  Then the infra container
   (`io.kubernetes.cri-o.ContainerType=sandbox`, its id = the SandboxID) is created
   through conmon and started.
2. CreateContainer x2: `ContainerType=container`, `SandboxID=<infra id>`, the pinned
   net/ipc/uts namespaces by path, a pid and mount namespace of their own, /dev/shm bound
   from the pod's shm; each through its own conmon; StartContainer is `start`.
3. ExecSync (probes): `conmon -e --sync --exec-process-spec F ...`, which runs
   `<runtime> exec --pid-file P --process F --detach <id>` and reports the exit code on
   the sync pipe; the output is read back from conmon's k8s-file log.  With `-T`, conmon
   SIGKILLs the exec on timeout: the process must go from the container too.
4. Exec (streaming, `kubectl exec`): `<runtime> exec --process F <id>` in the
   foreground, stdio on pipes, its exit code is the command's.
5. StopContainer: `kill <id> <stop signal>`, poll the pid (pid + start time, CRI-O's
   `Living()`), after the timeout `kill <id> KILL` with backoff until it is gone; `state`
   reads stopped; conmon's exit file holds the code.  The members run as PID 1 of their
   own pid namespace, which ignores a TERM it has no handler for: one member traps TERM
   and exits 42, the other ignores it and must be escalated to KILL (137).
6. StopPodSandbox/RemovePodSandbox: the infra is stopped, `delete --force` of the
   members, then of the infra.  Nothing may be left: no VM, no conmon, no state, no mount.

Against runc the same calls make three plain containers sharing pinned namespaces; only
the "one VM for the pod" checks are vmrt's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_conmon import CONMON, K8S_LINE, ConmonRun, read_sync

from helpers import netlab, procs
from helpers.rootfs import make_spec, write_bundle
from helpers.runtime import Runtime

pytestmark = pytest.mark.compat

POD_HOSTNAME = "crio-pod"
POD_NAME, POD_NAMESPACE, POD_UID = "replay", "default", "5c1d2e3f-0000-4000-8000-000000000001"
SANDBOX_NAME = f"k8s_POD_{POD_NAME}_{POD_NAMESPACE}_{POD_UID}_0"
MAX_EXEC_SYNC_SIZE = 16 * 1024 * 1024  # CRI-O's maxExecSyncSize

# The infra plays `pause`: exits 0 on TERM.  (Under runc it is PID 1 of its pid
# namespace; pause has handlers for exactly that reason.)
PAUSE = ["sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 1000 & wait $!; done"]
# Member A traps TERM: CRI-O's stop ends with the program's own exit code.
TRAPS_TERM = ["sh", "-c",
              "trap 'echo got-TERM; exit 42' TERM; echo a-ready; hostname; "
              "echo from-a > /dev/shm/from-a; while :; do sleep 1000 & wait $!; done"]
# Member B ignores TERM (as PID 1 without a handler would): the stop must escalate.
IGNORES_TERM = ["sh", "-c", "trap '' TERM; echo b-ready; exec sleep 100000"]


# -- the pod's namespaces, shm and network, as CRI-O prepares them -------------------------

@dataclass
class PodEnv:
    dir: Path
    netns: Path
    ipcns: Path
    utsns: Path
    shm: Path
    exit_dir: Path
    ip: str | None = None  # the address CNI gave the pod, if CNI ran
    mounts: list[Path] = field(default_factory=list)

    def namespaces(self) -> list[dict[str, str]]:
        """CRI-O's spec for the infra and every member alike: the pinned net/ipc/uts by
        path, a pid and a mount namespace of its own (shareProcessNamespace off)."""
        return [{"type": "pid"},
                {"type": "network", "path": str(self.netns)},
                {"type": "ipc", "path": str(self.ipcns)},
                {"type": "uts", "path": str(self.utsns)},
                {"type": "mount"}]


def _run(*argv: str) -> None:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, f"{' '.join(argv)}: {res.stderr or res.stdout}"


@pytest.fixture
def pod_env(short_tmp: Path) -> Iterator[PodEnv]:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) missing")
    d = short_tmp / "pod"
    ns = d / "ns"
    ns.mkdir(parents=True)
    env = PodEnv(d, ns / "net", ns / "ipc", ns / "uts", d / "shm", d / "exits")
    env.exit_dir.mkdir()
    for f in (env.netns, env.ipcns, env.utsns):
        f.touch()
    lab: netlab.NetLab | None = None
    try:
        # pinns: one process makes the namespaces, bind-mounts them, sets the hostname.
        _run("unshare", f"--net={env.netns}", f"--ipc={env.ipcns}", f"--uts={env.utsns}",
             "hostname", POD_HOSTNAME)
        env.mounts += [env.netns, env.ipcns, env.utsns]
        env.shm.mkdir()
        _run("mount", "-t", "tmpfs", "-o", "mode=1777,size=65536k,nosuid,nodev,noexec",
             "shm", str(env.shm))
        env.mounts.append(env.shm)
        if netlab.available() is None:
            lab = netlab.NetLab(d / "cni", octet=37).__enter__()
            env.ip = lab.cni_add(str(env.netns), "crio-replay").address
        yield env
    finally:
        if lab is not None:
            lab.close()
        for m in reversed(env.mounts):
            subprocess.run(["umount", "--lazy", str(m)], check=False, capture_output=True)


# -- conmon as CRI-O starts it ---------------------------------------------------------------

class Crio:
    """The CRI-O side: conmon launches, runtime calls, what it remembers per container."""

    def __init__(self, runtime: Runtime, env: PodEnv) -> None:
        self.rt = runtime
        self.env = env
        self.runs: dict[str, ConmonRun] = {}
        self.init: dict[str, tuple[int, int]] = {}  # id -> (InitPid, InitStartTime)

    def bundle(self, busybox: Path, cid: str, args: list[str],
               annotations: dict[str, str]) -> Path:
        """The container's bundle as CRI-O writes it (userdata/config.json)."""
        b = self.env.dir / "c" / cid
        spec = make_spec(args, annotations=annotations)
        spec["hostname"] = POD_HOSTNAME
        spec["linux"]["namespaces"] = self.env.namespaces()
        # No cgroupsPath: CRI-O's (/kubepods/.../crio-<id>) would leave parent cgroups
        # on the host after a runc run; the runtime's default is as good here.
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/dev/shm"]
        spec["mounts"].append({"destination": "/dev/shm", "type": "bind",
                               "source": str(self.env.shm),
                               "options": ["rw", "bind", "nosuid", "nodev", "noexec"]})
        return write_bundle(b, busybox, spec)

    def create(self, bundle: Path, cid: str, name: str) -> ConmonRun:
        """CreateContainer: conmon with CRI-O's argv, the sync pipe at fd 3 and the
        start pipe at fd 4 (here: where they are), cwd = the bundle."""
        d = self.env.dir / "conmon" / cid
        persist, socks = d / "persist", d / "s"
        for p in (persist, socks):
            p.mkdir(parents=True)
        log_path = self.env.dir / "logs" / name / "0.log"
        log_path.parent.mkdir(parents=True)
        argv = [
            CONMON, "-b", str(bundle), "-c", cid, "--exit-dir", str(self.env.exit_dir),
            "-l", str(log_path), "--log-level", "debug", "-n", name,
            "-P", str(d / "conmon-pidfile"), "-p", str(bundle / "pidfile"),
            "--persist-dir", str(persist), "-r", self.rt.binary,
            "--runtime-arg", f"--root={self.rt.root}", "--socket-dir-path", str(socks),
            "--syslog", "-u", cid,
        ]
        sync_r, sync_w = os.pipe()
        start_r, start_w = os.pipe()
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "_OCI_SYNCPIPE": str(sync_w), "_OCI_STARTPIPE": str(start_r)}
        conmon_log = d / "conmon.out"
        with conmon_log.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, cwd=bundle, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    pass_fds=(sync_w, start_r))
        os.close(sync_w)
        os.close(start_r)
        os.write(start_w, b"\0")  # "conmon is in its cgroup: go"
        os.close(start_w)
        try:
            assert proc.wait(timeout=60) == 0, conmon_log.read_text()
            sync = read_sync(sync_r, self.rt.spec.op_timeout)
        finally:
            os.close(sync_r)
        pidfile = d / "conmon-pidfile"
        conmon_pid = int(pidfile.read_text()) if pidfile.exists() else -1
        run = ConmonRun(cid, bundle, self.env.exit_dir, persist, log_path, conmon_log, sync,
                        conmon_pid)
        self.runs[cid] = run
        assert sync.get("pid", -1) > 0, \
            f"create of {cid} failed under conmon: {sync}\n{conmon_log.read_text()[-3000:]}"
        pid = sync["pid"]
        p = procs.read_proc(pid)
        assert p is not None, f"{cid}: pid {pid} from conmon is not running"
        assert p.ppid == conmon_pid, \
            f"{cid}: pid {pid} has parent {p.ppid}, not its conmon {conmon_pid}"
        self.init[cid] = (pid, p.starttime)
        return run

    def living(self, cid: str) -> bool:
        """CRI-O's Container.Living(): the init pid is alive and still the same process."""
        pid, start = self.init[cid]
        p = procs.read_proc(pid)
        return p is not None and p.alive and p.starttime == start

    def stop(self, cid: str, stop_signal: str, timeout: float) -> bool:
        """StopContainer: the stop signal, then KILL with backoff after `timeout`.
        Returns whether it had to escalate."""
        self.rt.ok("kill", cid, stop_signal)
        if procs.wait_until(lambda: not self.living(cid), timeout, interval=0.1):
            return False
        assert self.rt.state(cid)["status"] == "running", "alive, yet not running?"
        backoff = 0.5
        deadline = time.monotonic() + self.rt.spec.exit_timeout
        while self.living(cid):
            assert time.monotonic() < deadline, f"{cid} survives KILL"
            res = self.rt.run("kill", cid, "KILL")
            # CRI-O treats these words as "already gone" (ErrNotFound)
            assert res.returncode == 0 or any(
                w in res.stderr for w in ("no such process", "container not running",
                                          "invalid process")) or not self.living(cid), res
            procs.wait_until(lambda: not self.living(cid), backoff, interval=0.05)
            backoff = min(backoff * 2, 8.0)
        return True

    def exec_sync(self, cid: str, name: str, process: dict[str, Any],
                  timeout: int = 0) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
        """ExecSyncContainer: conmon -e --sync; returns (the sync message, log entries)."""
        d = self.env.dir / "execsync"
        d.mkdir(exist_ok=True)
        tag = f"{cid}-{time.monotonic_ns()}"
        pid_file, log_path, pfile = d / f"{tag}.pid", d / f"{tag}.log", d / f"{tag}.json"
        pid_file.touch()  # os.CreateTemp: both exist, empty, before conmon runs
        log_path.touch()
        pfile.write_text(json.dumps(process))
        argv = [CONMON, "-c", cid, "-n", name, "-r", self.rt.binary, "-p", str(pid_file),
                "-e", "-l", str(log_path), "--socket-dir-path", str(d),
                "--log-level", "debug", "--sync",
                "--log-global-size-max", str(MAX_EXEC_SYNC_SIZE)]
        if timeout > 0:
            argv += ["-T", str(timeout)]
        argv += ["--exec-process-spec", str(pfile), "--runtime-arg", f"--root={self.rt.root}"]
        sync_r, sync_w = os.pipe()
        start_r, start_w = os.pipe()
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "_OCI_SYNCPIPE": str(sync_w), "_OCI_STARTPIPE": str(start_r)}
        # Pipes for conmon's own stdout/stderr, as Go's bytes.Buffer makes them: CRI-O's
        # cmd.Wait() waits for their EOF, so nothing the runtime leaves behind may hold them.
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(sync_w, start_r))
        os.close(sync_w)
        os.close(start_r)
        os.write(start_w, b"\0")
        os.close(start_w)
        try:
            out, err = proc.communicate(timeout=self.rt.spec.op_timeout + timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"ExecSync conmon did not finish: {out!r} {err!r}") from None
        try:
            raw = b""
            while chunk := os.read(sync_r, 65536):
                raw += chunk
        finally:
            os.close(sync_r)
        msgs = [json.loads(line) for line in raw.splitlines() if line.strip()]
        assert msgs, f"no message on the sync pipe; conmon said {out!r} {err!r}"
        # CRI-O decodes exactly one exitCodeInfo object from the pipe.
        entries = []
        for line in log_path.read_text().splitlines():
            m = K8S_LINE.match(line)
            assert m, f"not a k8s-file log line: {line!r}"
            entries.append((m.group(2), m.group(3), m.group(4)))
        return msgs[0], entries

    def exec_stream(self, cid: str, process: dict[str, Any], stdin: bytes
                    ) -> subprocess.CompletedProcess[bytes]:
        """ExecContainer without a tty: `<runtime> --root R exec --process F <id>` in the
        foreground with stdin, stdout and stderr on pipes."""
        pfile = self.env.dir / f"exec-{time.monotonic_ns()}.json"
        pfile.write_text(json.dumps(process))
        return subprocess.run([self.rt.binary, "--root", str(self.rt.root), "exec",
                               "--process", str(pfile), cid],
                              input=stdin, capture_output=True,
                              timeout=self.rt.spec.op_timeout, check=False)


def crio_annotations(cid: str, kind: str, name: str, sandbox_id: str) -> dict[str, str]:
    """The annotations CRI-O puts on the infra (kind=sandbox, cid == sandbox_id) and on
    its members."""
    ann = {
        "io.kubernetes.cri-o.ContainerType": kind,
        "io.kubernetes.cri-o.SandboxID": sandbox_id,
        "io.kubernetes.cri-o.SandboxName": SANDBOX_NAME,
        "io.kubernetes.cri-o.ContainerID": cid,
        "io.kubernetes.cri-o.ContainerName": name,
        "io.kubernetes.cri-o.Name": name,
        "io.kubernetes.cri-o.Namespace": POD_NAMESPACE,
        "io.kubernetes.cri-o.KubeName": POD_NAME,
        "io.kubernetes.cri-o.HostName": POD_HOSTNAME,
        "io.kubernetes.cri-o.HostNetwork": "false",
        "io.kubernetes.cri-o.Labels": json.dumps({"io.kubernetes.pod.name": POD_NAME}),
        "io.kubernetes.cri-o.Annotations": "{}",
        "io.kubernetes.cri-o.Created": "2024-01-01T00:00:00.000000000Z",
        "io.kubernetes.cri-o.TTY": "false",
        "io.kubernetes.pod.name": POD_NAME,
        "io.kubernetes.pod.namespace": POD_NAMESPACE,
        "io.kubernetes.pod.uid": POD_UID,
    }
    if kind == "container":
        ann["io.kubernetes.container.name"] = name.split("_")[1]
    return ann


def exec_process(bundle: Path, args: list[str]) -> dict[str, Any]:
    """prepareProcessExec: the container's own process with the command's args."""
    process = json.loads((bundle / "config.json").read_text())["process"]
    return {**process, "args": args, "terminal": False}


def qemu_of(rt: Runtime) -> list[int]:
    return [p.pid for p in procs.all_procs()
            if p.alive and "qemu-system" in p.comm and str(rt.root) in p.cmdline]


@pytest.fixture
def crio(runtime: Runtime, pod_env: PodEnv) -> Iterator[Crio]:
    if not os.access(CONMON, os.X_OK):
        pytest.skip("conmon not installed")
    c = Crio(runtime, pod_env)
    yield c
    left = [r.conmon_pid for r in c.runs.values()
            if r.conmon_pid > 0 and procs.pid_alive(r.conmon_pid)]
    if left:
        runtime.force_delete_all()
    left = procs.wait_gone(left, 15)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    assert not left, f"conmon still running after its container was deleted: {left}"


def test_crio_pod_replay(crio: Crio, runtime: Runtime, busybox_rootfs: Path,
                         new_id) -> None:
    env = crio.env
    # -- RunPodSandbox ---------------------------------------------------------------------
    sid = new_id()
    infra_b = crio.bundle(busybox_rootfs, sid, PAUSE,
                          crio_annotations(sid, "sandbox", SANDBOX_NAME, sid))
    infra = crio.create(infra_b, sid, SANDBOX_NAME)
    assert runtime.state(sid)["status"] == "created"
    runtime.ok("start", sid)
    assert runtime.state(sid)["status"] == "running"

    # -- CreateContainer / StartContainer x2 ----------------------------------------------
    members = {}
    for letter, args in (("a", TRAPS_TERM), ("b", IGNORES_TERM)):
        cid = new_id()
        name = f"k8s_{letter}-ctr_{POD_NAME}_{POD_NAMESPACE}_{POD_UID}_0"
        ann = crio_annotations(cid, "container", name, sid)
        b = crio.bundle(busybox_rootfs, cid, args, ann)
        members[letter] = (cid, name, b, crio.create(b, cid, name))
        st = runtime.state(cid)
        assert (st["status"], st["pid"]) == ("created", crio.init[cid][0]), st
        runtime.ok("start", cid)
    (a_id, a_name, a_b, a_run), (b_id, _, b_b, b_run) = members["a"], members["b"]

    for run, line in ((a_run, "a-ready"), (b_run, "b-ready")):
        assert procs.wait_until(
            lambda run=run, line=line: run.log_path.exists()
            and ("stdout", "F", line) in run.log_entries(), runtime.spec.exit_timeout), \
            f"{run.cid} never logged {line}: {run.log_path.read_text()!r}"
    assert ("stdout", "F", POD_HOSTNAME) in a_run.log_entries(), "the pod's hostname"
    if runtime.is_vmrt:
        assert len(qemu_of(runtime)) == 1, "one VM for the pod: infra and both members"
        sandbox = json.loads((runtime.root / "sandboxes" / sid / "sandbox.json").read_text())
        assert set(sandbox["members"]) == {sid, a_id, b_id}, sandbox

    # -- Exec (streaming): foreground, stdio pipes ----------------------------------------
    show_ip = "ip -4 -o addr show eth0" if env.ip else "true"
    res = crio.exec_stream(b_id, exec_process(b_b, [
        "sh", "-c", f"read x; echo got-$x; cat /dev/shm/from-a; hostname; {show_ip}; "
                    "echo to-err >&2; exit 3"]), b"ping\n")
    out = res.stdout.decode()
    assert res.returncode == 3, res
    assert out.splitlines()[:3] == ["got-ping", "from-a", POD_HOSTNAME], res
    assert res.stderr == b"to-err\n", res
    if env.ip:
        assert f" {env.ip}/" in out, f"the pod's CNI address {env.ip} is not on eth0: {out}"

    # -- ExecSync through conmon ------------------------------------------------------------
    msg, entries = crio.exec_sync(a_id, a_name, exec_process(a_b, [
        "sh", "-c", "echo sync-out; echo sync-err >&2; exit 5"]))
    assert msg.get("exit_code") == 5, msg
    assert ("stdout", "F", "sync-out") in entries and ("stderr", "F", "sync-err") in entries, \
        entries
    msg, entries = crio.exec_sync(a_id, a_name, exec_process(a_b, ["true"]))
    assert msg.get("exit_code") == 0, msg
    # A probe that hangs: conmon -T kills it and says so; the process is gone from the pod.
    msg, _ = crio.exec_sync(a_id, a_name, exec_process(a_b, ["sleep", "99999"]), timeout=2)
    assert msg.get("exit_code") == -1 and "timed out" in msg.get("message", ""), msg
    ps = ["sh", "-c", "ps -o args | grep -c '^sleep 99999' || true"]

    def probe_gone() -> bool:
        r = crio.exec_stream(a_id, exec_process(a_b, ps), b"")
        return r.returncode == 0 and r.stdout.strip() == b"0"

    assert procs.wait_until(probe_gone, 30, interval=0.5), \
        "the timed-out ExecSync process still runs in the container"

    # -- StopContainer: stop signal, timeout, KILL ----------------------------------------
    a_pid, b_pid = crio.init[a_id][0], crio.init[b_id][0]
    assert crio.stop(a_id, "TERM", timeout=60) is False, "a traps TERM and exits"
    assert a_run.wait_exit_code(runtime.spec.exit_timeout) == 42
    assert ("stdout", "F", "got-TERM") in a_run.log_entries()
    assert crio.stop(b_id, "15", timeout=2) is True, "b ignores TERM: CRI-O must escalate"
    assert b_run.wait_exit_code(runtime.spec.exit_timeout) == 137
    assert ("stdout", "F", "b-ready") in b_run.log_entries()
    for cid in (a_id, b_id):
        assert runtime.wait_status(cid, "stopped") == "stopped"
    assert procs.wait_gone([a_pid, b_pid, a_run.conmon_pid, b_run.conmon_pid], 15) == []
    assert runtime.state(sid)["status"] == "running", "members stopping leaves the pod up"
    if runtime.is_vmrt:
        assert len(qemu_of(runtime)) == 1

    # -- StopPodSandbox / RemovePodSandbox ------------------------------------------------
    assert crio.stop(sid, "15", timeout=60) is False, "the infra exits on TERM"
    assert infra.wait_exit_code(runtime.spec.exit_timeout) == 0
    assert runtime.wait_status(sid, "stopped") == "stopped"
    for cid in (a_id, b_id, sid):
        runtime.ok("delete", "--force", cid)
    # -- nothing left ---------------------------------------------------------------------
    assert runtime.list_ids() == []
    assert procs.wait_gone([r.conmon_pid for r in crio.runs.values()], 15) == []
    assert procs.wait_until(lambda: not qemu_of(runtime), 30), "a VM outlived the pod"
    assert procs.wait_until(
        lambda: not procs.procs_mentioning(str(runtime.root)), 30), \
        f"left: {procs.procs_mentioning(str(runtime.root))}"
    assert procs.mounts_under(runtime.root) == []
    if runtime.is_vmrt:
        for sub in ("containers", "sandboxes"):
            d = runtime.root / sub
            assert not d.is_dir() or not list(d.iterdir()), f"{d}: {list(d.iterdir())}"
