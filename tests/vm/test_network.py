"""Pod networking: CNI's interfaces carried into the VM (vmrt only).

Each test builds a private lab (tests/helpers/netlab.py): a "host" network
namespace where the real CNI `bridge` + `host-local` plugins make their bridge,
and pod namespaces they fill with a veth. The container then pings the
bridge's gateway, serves HTTP to a client in the lab's host namespace, and
shows CNI's address and MAC in its own `ip addr`. Teardown must leave no tap,
no tc filter, no NIC, and no namespace vmrt made. Traffic never leaves
namespaces made here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import netlab, procs
from helpers.netlab import NetLab
from helpers.oci_image import rootfs_tar
from helpers.rootfs import edit_config
from helpers.runtime import Runtime, run_to_files

pytestmark = pytest.mark.vm

PORT = 8080


@pytest.fixture(autouse=True)
def _vmrt_only(runtime: Runtime) -> None:
    if runtime.name != "vmrt":
        pytest.skip("carrying CNI's interfaces into a VM is vmrt's business; runc has no VM")
    why = netlab.available()
    if why:
        pytest.skip(why)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[NetLab]:
    with NetLab(tmp_path / "lab") as lab:
        yield lab


def serving(token: str, gateway: str | None = None) -> list[str]:
    """Show eth0, ping the gateway, then serve `token` over HTTP on PORT."""
    ping = f"ping -c 2 -W 20 {gateway} && echo PING-OK; " if gateway else ""
    return ["sh", "-c", f"ip addr show eth0; {ping}echo {token} > /tmp/index.html; "
                        f"exec httpd -f -p {PORT} -h /tmp"]


def network_spec(bundle: Path, netns: str | None) -> None:
    """The spec's network namespace: a path, new (None), or none at all ("host")."""
    def edit(spec: dict[str, Any]) -> None:
        namespaces = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"]
        if netns != "host":
            namespaces.append({"type": "network", **({"path": netns} if netns else {})})
        spec["linux"]["namespaces"] = namespaces
        for caps in spec["process"]["capabilities"].values():
            caps.append("CAP_NET_RAW")  # busybox ping opens a raw socket
    edit_config(bundle, edit)


def fetch(lab: NetLab, address: str, timeout: float = 60.0) -> str:
    """GET / from the lab's host namespace, retrying until the server listens."""
    code = (f"import urllib.request; print(urllib.request.urlopen("
            f"'http://{address}:{PORT}/index.html', timeout=5).read().decode(), end='')")
    deadline = time.monotonic() + timeout
    while True:
        res = lab.in_host(sys.executable, "-I", "-c", code, timeout=30)
        if res.returncode == 0:
            return res.stdout.decode()
        if time.monotonic() > deadline:
            raise AssertionError(f"no HTTP answer from {address}: {res.stderr.decode()[-500:]}")
        time.sleep(0.3)


def sandbox_json(rt: Runtime, cid: str) -> dict[str, Any]:
    return json.loads((rt.root / "sandboxes" / cid / "sandbox.json").read_text())


def monitor_call(rt: Runtime, cid: str, op: str) -> dict[str, Any]:
    from vmrt.monitor.client import MonitorClient

    with MonitorClient(rt.root / "sandboxes" / cid / "monitor.sock") as mon:
        return mon.call(op)


def detached(rt: Runtime, out: Path, *args: str) -> None:
    """A verb whose container keeps stdout and stderr: files, as conmon would hold them
    (a pipe would wait for the container's EOF)."""
    err = out.with_suffix(".err")
    with out.open("wb") as f, err.open("wb") as e:
        res = subprocess.run(rt.argv(*args), stdout=f, stderr=e, timeout=rt.spec.op_timeout)
    assert res.returncode == 0, f"{args[0]} failed: {err.read_text()}"


def wait_output(path: Path, pattern: str, timeout: float = 60.0) -> str:
    found = procs.wait_until(lambda: re.search(pattern, path.read_text()) is not None,
                             timeout, interval=0.1)
    text = path.read_text()
    assert found, f"container output never matched {pattern!r}:\n{text}"
    return text


def assert_eth0(output: str, mac: str, address: str, prefixlen: int) -> None:
    assert f"link/ether {mac}" in output, f"the guest NIC lacks CNI's MAC {mac}:\n{output}"
    assert f"inet {address}/{prefixlen}" in output, f"eth0 lacks {address}:\n{output}"


# -- a namespace named in the spec (CRI-O, podman, containerd CRI) ------------------------

def test_joined_netns_carried_into_the_vm(runtime: Runtime, bundle, new_id, lab: NetLab,
                                          tmp_path: Path) -> None:
    pod_ns = lab.new_pod_netns()
    cni = lab.cni_add(pod_ns, "pod1")
    cid = new_id()
    b = bundle(serving("joined-ok", cni.gateway))
    network_spec(b, pod_ns)
    out = tmp_path / "out"
    detached(runtime, out, "run", "--detach", "--bundle", str(b), cid)
    try:
        assert fetch(lab, cni.address) == "joined-ok\n"
        text = wait_output(out, "PING-OK")
        assert_eth0(text, cni.mac, cni.address, cni.prefixlen)
        # The NIC is recorded, and the pod's traffic goes through a tap beside eth0.
        sb = sandbox_json(runtime, cid)
        assert sb["network"]["mode"] == "joined" and sb["network"]["links"] == ["eth0"]
        nics = [d for d in sb["devices"] if d["kind"] == "net"]
        assert len(nics) == 1, sb["devices"]
        assert nics[0]["id"] in monitor_call(runtime, cid, "network_info")["pci"]
        assert any(name.startswith("vmtap") for name in netlab.links(pod_ns))
        assert "ingress" in netlab.ingress_qdiscs(pod_ns)
    finally:
        runtime.ok("delete", "--force", cid)
    # CNI's interface stays for CNI's DEL; vmrt's tap and filter are gone.
    left = netlab.links(pod_ns)
    assert "eth0" in left and not [n for n in left if n.startswith("vmtap")], left
    assert netlab.ingress_qdiscs(pod_ns) == "", "a tc redirect outlived the VM"


def test_delete_after_the_monitor_died_drops_the_redirect(runtime: Runtime, bundle, new_id,
                                                          lab: NetLab) -> None:
    """The monitor could not undo its tc redirect: delete does, in the joined namespace."""
    pod_ns = lab.new_pod_netns()
    lab.cni_add(pod_ns, "pod2")
    cid = new_id()
    b = bundle(["sleep", "100000"])
    network_spec(b, pod_ns)
    runtime.ok("run", "--detach", "--bundle", str(b), cid)
    try:
        assert "ingress" in netlab.ingress_qdiscs(pod_ns)
        monitor_pid = sandbox_json(runtime, cid)["monitor"]["pid"]
        os.kill(monitor_pid, 9)
        assert procs.wait_gone([monitor_pid], 10) == []
        assert "ingress" in netlab.ingress_qdiscs(pod_ns), "nobody undid it yet"
    finally:
        runtime.ok("delete", "--force", cid)
    left = netlab.links(pod_ns)
    assert "eth0" in left and not [n for n in left if n.startswith("vmtap")], left
    assert netlab.ingress_qdiscs(pod_ns) == "", "delete left the dead monitor's tc redirect"


# -- ocid: vmrt makes the namespace, CNI runs between create and start --------------------

def test_ocid_flow_new_netns(runtime: Runtime, bundle, new_id, lab: NetLab,
                             tmp_path: Path) -> None:
    cid = new_id()
    b = bundle(serving("ocid-ok", lab.gateway))
    network_spec(b, None)
    out, pid_file = tmp_path / "out", tmp_path / "pid"
    detached(runtime, out, "create", "--bundle", str(b), "--pid-file", str(pid_file), cid)
    try:
        pid = int(pid_file.read_text())
        netns_path = f"/proc/{pid}/ns/net"
        inode = os.stat(netns_path).st_ino
        assert inode != os.stat("/proc/self/ns/net").st_ino, "the shim is in the host's netns"
        assert netlab.links(netns_path) == ["lo"], "vmrt's new namespace is not empty"
        cni = lab.cni_add(netns_path, cid)
        runtime.ok("start", cid)
        assert fetch(lab, cni.address) == "ocid-ok\n"
        text = wait_output(out, "PING-OK")
        assert_eth0(text, cni.mac, cni.address, cni.prefixlen)
        assert sandbox_json(runtime, cid)["network"]["mode"] == "new"

        # Unplug, as delete does: no NIC left in QEMU, no tap, no filter, no record.
        nic = next(d["id"] for d in sandbox_json(runtime, cid)["devices"] if d["kind"] == "net")
        assert nic in monitor_call(runtime, cid, "network_info")["pci"]
        monitor_call(runtime, cid, "detach_network")
        info = monitor_call(runtime, cid, "network_info")
        assert nic not in info["pci"] and info["links"] == [], info
        assert netlab.links(netns_path) == ["lo", "eth0"], "the tap outlived its NIC"
        assert netlab.ingress_qdiscs(netns_path) == ""
        sb = sandbox_json(runtime, cid)
        assert not [d for d in sb["devices"] if d["kind"] == "net"], sb["devices"]
        assert sb["network"]["links"] == []
    finally:
        runtime.ok("delete", "--force", cid)
    assert not netlab.netns_alive(inode), "the namespace vmrt made outlived the container"


# -- no network namespace in the spec ------------------------------------------------------

def test_host_network_spec_gets_no_nic(runtime: Runtime, bundle, new_id, lab: NetLab) -> None:
    """A VM cannot share the host's stack: it gets no NIC, the container sees only lo."""
    b = bundle(["ip", "-o", "link"])
    network_spec(b, "host")
    res = runtime.run("run", "--bundle", str(b), new_id())
    assert res.returncode == 0, res
    names = [line.split(":")[1].strip() for line in res.stdout.splitlines()]
    assert names == ["lo"], res.stdout


# -- podman with a bridge network (netavark), inside a namespace made here ----------------

PODMAN = shutil.which("podman")
IMAGE = "localhost/vmrt-net-busybox:test"


class PrivatePodman:
    """podman, conmon and vmrt inside a private network + mount namespace, with private
    storage and network config: podman's bridge (10.250.9.0/24) lives only there."""

    def __init__(self, base: Path, vmrt: str) -> None:
        self.base = base
        self.vmrt = vmrt
        conf, storage = base / "containers.conf", base / "storage.conf"
        for d in ("root", "runroot", "tmp", "networks"):
            (base / d).mkdir(parents=True)
        conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\nevents_logger = "file"\nlock_type = "file"\n'
            f'tmp_dir = "{base}/tmp"\n'
            'runtime_supports_json = ["vmrt"]\n'
            f'[engine.runtimes]\nvmrt = ["{vmrt}"]\n'
            "[network]\n"
            'network_backend = "netavark"\n'
            f'network_config_dir = "{base}/networks"\n'
            'default_subnet = "10.250.9.0/24"\n')
        storage.write_text(f'[storage]\ndriver = "vfs"\nrunroot = "{base}/runroot"\n'
                           f'graphroot = "{base}/root"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf),
                    "CONTAINERS_STORAGE_CONF": str(storage)}
        self.env.pop("CONTAINER_HOST", None)
        # The holder keeps the namespaces; every podman call enters them.
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "sleep", "100000"],
            stdin=subprocess.DEVNULL)
        ok = procs.wait_until(
            lambda: os.stat(f"/proc/{self.holder.pid}/ns/net").st_ino
            != os.stat("/proc/self/ns/net").st_ino, 10)
        assert ok, "unshare did not make a network namespace"

    def enter(self, *argv: str, mount: bool = True) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "--net", *(["--mount"] if mount else []),
                *argv]

    def __call__(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        base = self.base
        return run_to_files(self.enter(
            "podman", "--root", f"{base}/root", "--runroot", f"{base}/runroot",
            "--tmpdir", f"{base}/tmp", "--cgroup-manager", "cgroupfs", "--events-backend",
            "file", "--storage-driver", "vfs", *args), env=self.env, timeout=timeout)

    def ok(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        res = self(*args, **kw)
        assert res.returncode == 0, f"podman {' '.join(args)}: {res.stdout}{res.stderr}"
        return res

    def close(self) -> None:
        self("rm", "--all", "--force", "--time", "0")
        self("rmi", "--all", "--force")
        self.holder.kill()
        self.holder.wait()


@pytest.mark.compat
def test_podman_bridge_network(runtime: Runtime, busybox_rootfs: Path) -> None:
    if PODMAN is None or shutil.which("conmon") is None \
            or not Path("/usr/lib/podman/netavark").exists():
        pytest.skip("podman, conmon or netavark (/usr/lib/podman) not installed")
    base = Path(tempfile.mkdtemp(prefix="vn", dir="/tmp"))
    pm = PrivatePodman(base, runtime.binary)
    try:
        tar = rootfs_tar(busybox_rootfs, base / "busybox.tar")
        pm.ok("import", "--quiet", str(tar), IMAGE)
        cid = pm.ok("run", "--detach", "--runtime", runtime.binary, "--network", "bridge",
                    IMAGE, *serving("podman-ok")).stdout.strip()
        address, mac = pm.ok("inspect", cid, "--format",
                             "{{.NetworkSettings.IPAddress}} {{.NetworkSettings.MacAddress}}"
                             ).stdout.split()
        assert address.startswith("10.250.9."), address
        code = (f"import urllib.request; print(urllib.request.urlopen("
                f"'http://{address}:{PORT}/index.html', timeout=5).read().decode(), end='')")
        got: list[str] = []

        def answered() -> bool:
            res = run_to_files(pm.enter(sys.executable, "-I", "-c", code, mount=False),
                               timeout=30)
            got[:] = [res.stdout + res.stderr[-300:]]
            return res.returncode == 0

        assert procs.wait_until(answered, 60, interval=0.3), got
        assert got[0] == "podman-ok\n"
        logs = pm.ok("logs", cid).stdout
        assert f"link/ether {mac}" in logs and f"inet {address}/" in logs, logs
        pm.ok("rm", "--force", "--time", "0", cid)
        assert cid not in runtime_ids(runtime.binary), "vmrt kept the container"
    finally:
        pm.close()
        left = procs.procs_mentioning(str(base))
        procs.kill_procs(left)
        shutil.rmtree(base, ignore_errors=True)
    assert not left, f"podman left processes: {left}"


def runtime_ids(binary: str) -> set[str]:
    """Ids in vmrt's default root, where podman's containers go (podman passes no --root)."""
    res = run_to_files([binary, "list", "-q"], timeout=60)
    return set(res.stdout.split())
