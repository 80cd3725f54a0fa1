"""Pods: one VM per pod, containers joining it, in every CRI dialect (vmrt only).

The flows are replayed exactly as the managers call the runtime: the sandbox
(infra) container's create/start, then members' create/start naming the pod.
What a user checks: one QEMU per pod, members see each other's /dev/shm and
the pod's hostname, deleting members leaves the VM up, deleting the sandbox
leaves nothing.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from helpers.runtime import Runtime

pytestmark = pytest.mark.vm

PAUSE = ["sleep", "100000"]
WRITER = ["sh", "-c", "echo shared-$$ > /dev/shm/token; hostname; sleep 100000"]
READER = ["sh", "-c", "while [ ! -s /dev/shm/token ]; do sleep 0.1; done; "
                      "cat /dev/shm/token; hostname; sleep 100000"]

# dialect → (sandbox annotations for pod P, member annotations joining P)
DIALECTS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "ocid": ({"ocid/container_type": "sandbox", "ocid/name": "{pod}"},
             {"ocid/container_type": "container", "ocid/sandbox_name": "{pod}"}),
    "cri-o": ({"io.kubernetes.cri-o.ContainerType": "sandbox",
               "io.kubernetes.cri-o.SandboxName": "{pod}"},
              {"io.kubernetes.cri-o.ContainerType": "container",
               "io.kubernetes.cri-o.SandboxID": "{sid}"}),
    "containerd": ({"io.kubernetes.cri.container-type": "sandbox"},
                   {"io.kubernetes.cri.container-type": "container",
                    "io.kubernetes.cri.sandbox-id": "{sid}"}),
    "dockershim": ({"io.kubernetes.docker.type": "podsandbox"},
                   {"io.kubernetes.docker.type": "container", "io.kubernetes.sandbox.id": "{sid}"}),
}


@pytest.fixture(autouse=True)
def _vmrt_only(runtime: Runtime) -> None:
    if runtime.name != "vmrt":
        pytest.skip("pods are a VM runtime's notion; runc has none")


def _fill(annotations: dict[str, str], pod: str, sid: str) -> dict[str, str]:
    return {k: v.format(pod=pod, sid=sid) for k, v in annotations.items()}


class Started:
    """A container created with its stdout in a file, as conmon would hold it."""

    def __init__(self, rt: Runtime, bundle: Path, cid: str) -> None:
        self.cid = cid
        self.out = bundle / "stdout"
        err = bundle / "stderr"
        # Files, not pipes: the shim keeps the container's stdio open as long as it runs.
        with open(self.out, "wb") as out, open(err, "wb") as errf:
            res = subprocess.run(rt.argv("create", "--bundle", str(bundle), cid),
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=errf,
                                 timeout=rt.spec.op_timeout, check=False)
        assert res.returncode == 0, err.read_text()
        rt.ok("start", cid)

    def wait_lines(self, n: int, timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.out.read_text().splitlines()
            if len(lines) >= n:
                return lines
            time.sleep(0.1)
        raise AssertionError(f"{self.cid} printed {self.out.read_text()!r}")


def qemu_pids(rt: Runtime) -> list[int]:
    """QEMU processes of this test's --root (their console log lives under it)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"qemu-system-x86_64") and any(
                    str(rt.root).encode() in a for a in cmd):
                out.append(int(proc.name))
    return out


def sandbox_state(rt: Runtime, sid: str) -> dict[str, Any]:
    return json.loads((rt.root / "sandboxes" / sid / "sandbox.json").read_text())


def monitor_call(rt: Runtime, sid: str, op: str) -> dict[str, Any]:
    from vmrt.monitor.client import MonitorClient

    with MonitorClient(rt.root / "sandboxes" / sid / "monitor.sock") as mon:
        return mon.call(op)


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_pod_flow(runtime: Runtime, bundle, new_id, dialect: str) -> None:
    sandbox_ann, member_ann = DIALECTS[dialect]
    sid, pod = new_id(), "pod-" + dialect
    infra = Started(runtime, bundle(PAUSE, annotations=_fill(sandbox_ann, pod, sid)), sid)
    assert runtime.state(sid)["status"] == "running"
    writer_id, reader_id = new_id(), new_id()
    writer = Started(runtime, bundle(WRITER, annotations=_fill(member_ann, pod, sid)), writer_id)
    reader = Started(runtime, bundle(READER, annotations=_fill(member_ann, pod, sid)), reader_id)

    assert len(qemu_pids(runtime)) == 1, "a pod is one VM"
    assert set(sandbox_state(runtime, sid)["members"]) == {sid, writer_id, reader_id}
    token, reader_host = reader.wait_lines(2)[:2]
    writer_host = writer.wait_lines(1)[0]
    assert token.startswith("shared-"), "the pod's /dev/shm is shared by its members"
    assert reader_host == writer_host == "vmrt-test", "members see the pod's hostname"
    for member in (writer_id, reader_id):
        assert runtime.state(member)["status"] == "running"

    runtime.ok("kill", writer_id, "KILL")
    assert runtime.wait_status(writer_id, "stopped") == "stopped"
    runtime.ok("delete", writer_id)
    runtime.ok("delete", "--force", reader_id)
    assert len(qemu_pids(runtime)) == 1, "deleting members leaves the VM up"
    assert runtime.state(sid)["status"] == "running"
    assert monitor_call(runtime, sid, "info")["containers"] == [sid]

    runtime.ok("kill", sid, "KILL")
    assert runtime.wait_status(sid, "stopped") == "stopped"
    runtime.ok("delete", sid)
    assert runtime.list_ids() == []
    assert not (runtime.root / "sandboxes" / sid).exists()
    assert infra.cid == sid


def test_lazy_pod_without_sandbox_container(runtime: Runtime, bundle, new_id) -> None:
    """CRI-O's drop_infra_ctr: the first member boots the VM, the last one takes it away."""
    pod = "lazy" + new_id()
    ann = {"io.kubernetes.cri-o.ContainerType": "container",
           "io.kubernetes.cri-o.SandboxID": pod}
    first = Started(runtime, bundle(WRITER, annotations=ann), new_id())
    second = Started(runtime, bundle(READER, annotations=ann), new_id())
    assert len(qemu_pids(runtime)) == 1
    assert second.wait_lines(1)[0].startswith("shared-")
    runtime.ok("delete", "--force", first.cid)
    assert len(qemu_pids(runtime)) == 1, "one member left: the VM stays"
    runtime.ok("delete", "--force", second.cid)
    assert qemu_pids(runtime) == [], "the last member took the VM with it"
    assert not (runtime.root / "sandboxes" / pod).exists()


def test_member_of_a_dead_pod_is_refused(runtime: Runtime, bundle, new_id) -> None:
    sid = new_id()
    Started(runtime, bundle(PAUSE, annotations={"io.kubernetes.cri-o.ContainerType": "sandbox"}),
            sid)
    for pid in qemu_pids(runtime):
        subprocess.run(["kill", "-9", str(pid)], check=True)
    assert runtime.wait_status(sid, "stopped") == "stopped"
    member = bundle(PAUSE, annotations={"io.kubernetes.cri-o.ContainerType": "container",
                                        "io.kubernetes.cri-o.SandboxID": sid})
    res = runtime.run("create", "--bundle", str(member), new_id())
    assert res.returncode == 1
    assert res.stderr.strip() == f"vmrt create failed: the VM of sandbox {sid} is not running"
    assert runtime.list_ids() == [sid]
    runtime.ok("delete", "--force", sid)


def test_sandbox_with_live_members_is_not_deleted(runtime: Runtime, bundle, new_id) -> None:
    sid, member = new_id(), new_id()
    ann = {"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": sid}
    Started(runtime, bundle(PAUSE, annotations={"io.kubernetes.cri-o.ContainerType": "sandbox"}),
            sid)
    Started(runtime, bundle(PAUSE, annotations=ann), member)
    runtime.ok("kill", sid, "KILL")
    assert runtime.wait_status(sid, "stopped") == "stopped"
    assert runtime.state(member)["status"] == "running", "kill of the sandbox stops its pause only"
    res = runtime.run("delete", sid)
    assert res.returncode == 1
    assert res.stderr.strip() == f"cannot delete sandbox {sid} with running containers: {member}"
    runtime.ok("delete", "--force", sid)
    assert runtime.list_ids() == []
    assert qemu_pids(runtime) == []


def test_ten_members_joined_and_deleted_in_turn(runtime: Runtime, bundle, new_id) -> None:
    sid = new_id()
    Started(runtime, bundle(PAUSE, annotations={"io.kubernetes.cri-o.ContainerType": "sandbox"}),
            sid)
    before = monitor_call(runtime, sid, "devices")
    ann = {"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": sid}
    b = bundle(["true"], annotations=ann)
    for _ in range(10):
        cid = new_id()
        runtime.ok("create", "--bundle", str(b), cid)
        runtime.ok("start", cid)
        assert runtime.wait_status(cid, "stopped") == "stopped"
        runtime.ok("delete", cid)
    after = monitor_call(runtime, sid, "devices")
    assert after == before, "no PCI device or chardev may outlive its container"
    assert len(sandbox_state(runtime, sid)["devices"]) == 1  # the sandbox's own share
    virtiofsd = subprocess.run(["pgrep", "-f", f"source={runtime.root}"], capture_output=True,
                               text=True, check=False).stdout.split()
    assert len(virtiofsd) <= 2, virtiofsd  # the sandbox's share (virtiofsd forks once)
    runtime.ok("delete", "--force", sid)


def test_ten_concurrent_creates_into_one_pod(runtime: Runtime, bundle, new_id) -> None:
    sid = new_id()
    Started(runtime, bundle(PAUSE, annotations={"io.kubernetes.cri-o.ContainerType": "sandbox"}),
            sid)
    ann = {"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": sid}
    bundles = [bundle(PAUSE, annotations=ann) for _ in range(10)]
    cids = [new_id() for _ in bundles]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(
            lambda bc: runtime.run("create", "--bundle", str(bc[0]), bc[1], timeout=300),
            zip(bundles, cids, strict=True)))
    assert [r.returncode for r in results] == [0] * 10, [r.stderr for r in results]
    state = sandbox_state(runtime, sid)
    assert set(state["members"]) == {sid, *cids}
    slots = [d["slot"] for d in state["devices"]]
    assert len(slots) == len(set(slots)) == 11, "each container got a slot of its own"
    assert len(qemu_pids(runtime)) == 1
    runtime.ok("delete", "--force", sid)
    assert runtime.list_ids() == []


def test_member_shares_the_infra_pid_namespace(runtime: Runtime, bundle, new_id) -> None:
    """shareProcessNamespace: a member naming the infra's pid namespace sees its pause."""
    from helpers.rootfs import edit_config

    sid, member = new_id(), new_id()
    Started(runtime, bundle(["sleep", "4242"],
                            annotations={"io.kubernetes.cri-o.ContainerType": "sandbox"}), sid)
    b = bundle(["sh", "-c", "ps -o pid,args; sleep 100000"],
               annotations={"io.kubernetes.cri-o.ContainerType": "container",
                            "io.kubernetes.cri-o.SandboxID": sid})

    def share_pid(spec: dict[str, Any]) -> None:
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] == "pid":
                ns["path"] = "/proc/1/ns/pid"  # what a manager names: the infra's

    edit_config(b, share_pid)
    out = Started(runtime, b, member).wait_lines(3)
    assert any(line.split()[:2] == ["1", "sleep"] and "4242" in line for line in out), out
    runtime.ok("delete", "--force", sid)
