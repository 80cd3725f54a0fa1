"""A private network lab: a "host" namespace with a CNI bridge, and pod namespaces CNI fills.

Everything happens in network namespaces made here: the real CNI `bridge` and
`host-local` plugins (Debian's containernetworking-plugins, /usr/lib/cni) run
*inside* the lab's host namespace, so their bridge lives there and not on the
machine's host; IPAM state goes to a private directory. The subnet is private
to these namespaces (10.250.x.0/24); nothing touches the machine's interfaces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CNI_PATH = Path("/usr/lib/cni")
BUSYBOX = "/bin/busybox"


@dataclass(frozen=True)
class CniResult:
    address: str  # without the prefix length
    prefixlen: int
    gateway: str
    mac: str  # of the interface CNI put in the pod namespace


def available() -> str | None:
    """Why the lab cannot run here, or None."""
    for tool in (CNI_PATH / "bridge", CNI_PATH / "host-local"):
        if not tool.is_file():
            return f"{tool} missing: apt-get install containernetworking-plugins"
    if shutil.which("ip") is None:
        return "ip(8) missing: apt-get install iproute2"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


class NetLab:
    def __init__(self, workdir: Path, *, octet: int = 7) -> None:
        tag = uuid.uuid4().hex[:8]
        self.workdir = workdir
        self.host = f"vmrt-h-{tag}"
        self.bridge = f"vbr{tag[:6]}"
        self.subnet = f"10.250.{octet}.0/24"
        self.gateway = f"10.250.{octet}.1"
        self.pods: list[str] = []
        self._tag = tag

    # -- lifetime -------------------------------------------------------------------------

    def __enter__(self) -> NetLab:
        self.workdir.mkdir(parents=True, exist_ok=True)
        _ip("netns", "add", self.host)
        _ip("-n", self.host, "link", "set", "lo", "up")
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for name in [*self.pods, self.host]:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        self.pods.clear()

    # -- namespaces -----------------------------------------------------------------------

    def new_pod_netns(self) -> str:
        name = f"vmrt-p-{self._tag}-{len(self.pods)}"
        _ip("netns", "add", name)
        self.pods.append(name)
        return f"/run/netns/{name}"

    def host_argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.host, *argv]

    def in_host(self, *argv: str, timeout: float = 60, input: bytes | None = None,
                check: bool = False) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.host_argv(*argv), input=input, capture_output=True,
                              timeout=timeout, check=check)

    # -- CNI ------------------------------------------------------------------------------

    def net_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0", "name": f"vmrt-test-{self._tag}", "type": "bridge",
            "bridge": self.bridge, "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "subnet": self.subnet,
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.workdir / "ipam")},
        }

    def cni(self, command: str, netns: str, container_id: str,
            ifname: str = "eth0") -> dict[str, Any]:
        """Run the bridge plugin (it calls host-local) in the lab's host namespace."""
        env = [f"CNI_COMMAND={command}", f"CNI_CONTAINERID={container_id}",
               f"CNI_NETNS={netns}", f"CNI_IFNAME={ifname}", f"CNI_PATH={CNI_PATH}"]
        res = self.in_host("env", *env, str(CNI_PATH / "bridge"),
                           input=json.dumps(self.net_config()).encode())
        if res.returncode != 0:
            raise AssertionError(f"CNI {command} failed ({res.returncode}): "
                                 f"{res.stdout.decode(errors='replace')}"
                                 f"{res.stderr.decode(errors='replace')}")
        return json.loads(res.stdout) if res.stdout.strip() else {}

    def cni_add(self, netns: str, container_id: str, ifname: str = "eth0") -> CniResult:
        result = self.cni("ADD", netns, container_id, ifname)
        (ip,) = result["ips"]
        address, prefixlen = ip["address"].split("/")
        mac = next(i["mac"] for i in result["interfaces"] if i.get("sandbox"))
        return CniResult(address, int(prefixlen), ip["gateway"], mac)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def links(netns: str) -> list[str]:
    """Interface names in the namespace at path `netns` (via nsenter, read-only)."""
    res = subprocess.run(["nsenter", f"--net={netns}", "ip", "-o", "link", "show"],
                         capture_output=True, text=True, check=True, timeout=30)
    return [line.split(":")[1].strip().split("@")[0] for line in res.stdout.splitlines()]


def ingress_qdiscs(netns: str) -> str:
    """`tc qdisc show` lines of ingress qdiscs in the namespace at path `netns`."""
    res = subprocess.run(["nsenter", f"--net={netns}", "tc", "qdisc", "show"],
                         capture_output=True, text=True, check=True, timeout=30)
    return "".join(line for line in res.stdout.splitlines(keepends=True) if "ingress" in line)


def netns_alive(inode: int) -> bool:
    """Whether any process is in, or holds an fd on, the network namespace with this
    nsfs inode, or a mount pins it (a namespace nothing refers to is gone)."""
    held = f"net:[{inode}]"
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                return True
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == held:
                    return True
            except OSError:
                continue
    with open("/proc/self/mountinfo") as f:
        return any(held in line for line in f)
