"""Pod networking's parts, without a VM: the spec's namespace, scan, tap + tc, the agent's netlink.

The effectful parts run for real in throwaway network namespaces (`ip netns`),
each in a subprocess that `ip netns exec` put there: the host's own interfaces
are never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmrt.network import netns
from vmrt.state.model import NetworkRef, SandboxState

REPO = Path(__file__).resolve().parents[2]
AGENT_DIR = REPO / "guest-agent"
if str(AGENT_DIR) not in sys.path:
    sys.path.insert(0, str(AGENT_DIR))

from vmrt_agent import network as agent_network  # noqa: E402
from vmrt_agent.errors import InvalidError  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


# -- which namespace the spec asks for ----------------------------------------------------

@pytest.mark.parametrize(("namespaces", "want"), [
    ([{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}],
     NetworkRef("joined", path="/run/netns/x")),
    ([{"type": "network"}], NetworkRef("new")),
    ([{"type": "network", "path": ""}], NetworkRef("new")),
    ([{"type": "pid"}, {"type": "mount"}], NetworkRef("host")),
    ([], NetworkRef("host")),
])
def test_requested(namespaces: list[dict[str, str]], want: NetworkRef) -> None:
    assert netns.requested({"linux": {"namespaces": namespaces}}) == want


def test_requested_without_linux_is_host() -> None:
    assert netns.requested({}) == NetworkRef("host")


def test_network_ref_round_trips_in_sandbox_state() -> None:
    state = SandboxState("sb", "sb", "now",
                         network=NetworkRef("joined", "/run/netns/p", links=("eth0", "net1")))
    back = SandboxState.from_json(json.loads(json.dumps(state.to_json())))
    assert back == state
    assert SandboxState.from_json(SandboxState("sb", "sb", "now").to_json()).network is None


def test_uncarried_skips_lo_taps_and_carried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "interface_names", lambda pid: {"lo", "eth0", "net1", "vmtap1"})
    assert netns.uncarried(NetworkRef("new", links=("eth0",)), 1) == {"net1"}


def test_interface_names_of_this_process() -> None:
    assert "lo" in netns.interface_names(os.getpid())
    assert netns.interface_names(2**22 + 12345) == set()  # no such pid


# -- the agent's checks ---------------------------------------------------------------------

def _iface(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "eth0", "mac": "02:00:00:00:00:01", "mtu": 1500,
        "addresses": [{"family": 4, "address": "10.250.20.5", "prefixlen": 24}],
        "routes": [{"family": 4, "dst": "", "dst_len": 0, "gateway": "10.250.20.1", "scope": 0}],
    }
    base.update(over)
    return base


def test_parse_valid() -> None:
    (cfg,) = agent_network.parse_all([_iface(mac="02:AB:00:00:00:01")])
    assert cfg.mac == "02:ab:00:00:00:01" and cfg.name == "eth0" and cfg.mtu == 1500
    assert cfg.addresses[0].address == "10.250.20.5" and cfg.routes[0].gateway == "10.250.20.1"


@pytest.mark.parametrize("bad", [
    _iface(mac="02:00:00:00:00"), _iface(mac="zz:00:00:00:00:01"), _iface(name="a/b"),
    _iface(name="x" * 16), _iface(name=".."), _iface(name="eth 0"), _iface(mtu=10),
    _iface(addresses=[{"family": 4, "address": "fd00::1", "prefixlen": 24}]),
    _iface(addresses=[{"family": 4, "address": "10.0.0.1", "prefixlen": 33}]),
    _iface(addresses=[{"family": 5, "address": "10.0.0.1", "prefixlen": 8}]),
    _iface(addresses="10.0.0.1"),
    _iface(routes=[{"family": 4, "dst": "", "dst_len": 0, "gateway": "nope", "scope": 0}]),
    _iface(routes=[{}] * 65),
])
def test_parse_refuses(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidError):
        agent_network.parse_all([bad])


def test_parse_refuses_lists() -> None:
    for bad in (None, [], [_iface()] * 17, [_iface(), _iface(name="eth1")]):  # last: same MAC
        with pytest.raises(InvalidError):
            agent_network.parse_all(bad)


# -- effects, in throwaway namespaces -----------------------------------------------------

@pytest.fixture
def ns() -> Iterator[str]:
    name = f"vmrt-u-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True,
                          text=True).stdout


def _py_in(ns: str, code: str) -> str:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{AGENT_DIR}"}
    res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


@needs_root
def test_agent_configures_a_nic_by_mac(ns: str) -> None:
    """What the agent does to a fresh NIC, on a veth: renamed, MTU, up, addresses, routes;
    twice, because the host may retry."""
    _ip(ns, "link", "add", "nic0", "address", "02:00:00:aa:bb:01", "type", "veth",
        "peer", "name", "peer0")
    _ip(ns, "link", "set", "peer0", "up")
    config = [_iface(mac="02:00:00:aa:bb:01", mtu=1400, addresses=[
        {"family": 4, "address": "10.250.20.5", "prefixlen": 24},
        {"family": 6, "address": "fd00:250::5", "prefixlen": 64}], routes=[
        {"family": 4, "dst": "", "dst_len": 0, "gateway": "10.250.20.1", "scope": 0},
        {"family": 4, "dst": "10.251.0.0", "dst_len": 16, "gateway": "10.250.20.254",
         "scope": 0, "priority": 7}])]
    code = ("import asyncio, json; from vmrt_agent import network as n; "
            f"c = n.parse_all(json.loads({json.dumps(json.dumps(config))})); "
            "print(asyncio.run(n.setup(c, timeout=2))); print(asyncio.run(n.setup(c, timeout=2)))")
    assert _py_in(ns, code).split() == ["['eth0']", "['eth0']"]
    link = _ip(ns, "-o", "link", "show", "eth0")
    assert "mtu 1400" in link and "02:00:00:aa:bb:01" in link and ",UP" in link
    addrs = _ip(ns, "-o", "addr", "show", "eth0")
    assert "10.250.20.5/24" in addrs and "fd00:250::5/64" in addrs
    routes = _ip(ns, "route", "show")
    assert "default via 10.250.20.1 dev eth0" in routes
    assert "10.251.0.0/16 via 10.250.20.254 dev eth0" in routes and "metric 7" in routes


@needs_root
def test_agent_waits_bounded_for_a_missing_nic(ns: str) -> None:
    code = ("import asyncio; from vmrt_agent import network as n\n"
            "try:\n"
            "    asyncio.run(n.setup(n.parse_all([{'name': 'eth0', 'mac': '02:00:00:00:00:09',"
            " 'mtu': 1500}]), timeout=0.3))\n"
            "except n.AgentError as e:\n"
            "    print(e)\n")
    assert "02:00:00:00:00:09" in _py_in(ns, code)


@needs_root
def test_scan_tap_and_redirect(ns: str) -> None:
    """scan sees CNI's interface as the VM needs it; a tap gets tc redirects both ways;
    removing the redirect leaves the interface as CNI made it."""
    _ip(ns, "link", "add", "eth0", "address", "02:00:00:aa:bb:02", "mtu", "1450", "type",
        "veth", "peer", "name", "peer0")
    _ip(ns, "addr", "add", "10.250.21.5/24", "dev", "eth0")
    _ip(ns, "link", "set", "eth0", "up")
    _ip(ns, "link", "set", "peer0", "up")
    _ip(ns, "route", "add", "default", "via", "10.250.21.1")
    code = """
import json, os, subprocess
from vmrt.network import scan, tap
found = {i.name: i for i in scan.scan()}
eth0 = found["eth0"]
fd = tap.create("vmtap3", eth0.index, eth0.mtu)
filters = subprocess.run(["tc", "filter", "show", "dev", "eth0", "ingress"],
                         capture_output=True, text=True).stdout
back = subprocess.run(["tc", "filter", "show", "dev", "vmtap3", "ingress"],
                      capture_output=True, text=True).stdout
try:
    tap.create("vmtap4", eth0.index, eth0.mtu)
    refused = False
except Exception:
    refused = True
links_during = sorted(i.name for i in scan.scan())
removed = tap.remove_redirect("eth0")
os.close(fd)
left = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
print(json.dumps({"eth0": eth0.to_wire(), "kind": eth0.kind, "filters": filters, "back": back,
                  "refused": refused, "links": links_during, "removed": removed,
                  "again": tap.remove_redirect("eth0"), "left": left}))
"""
    out = json.loads(_py_in(ns, code))
    assert out["eth0"] == {
        "name": "eth0", "mac": "02:00:00:aa:bb:02", "mtu": 1450,
        "addresses": [{"family": 4, "address": "10.250.21.5", "prefixlen": 24}],
        "routes": [{"family": 4, "dst": "", "dst_len": 0, "gateway": "10.250.21.1",
                    "scope": 0, "priority": 0}]}  # no link-local v6, no kernel subnet route
    assert out["kind"] == "veth"
    assert "mirred (Egress Redirect to device vmtap3)" in out["filters"]
    assert "mirred (Egress Redirect to device eth0)" in out["back"]
    assert out["refused"], "a second tap on an already redirected interface"
    assert out["links"] == ["eth0", "peer0"], "scan must skip lo and vmrt's taps"
    assert out["removed"] and not out["again"]
    assert "vmtap" not in out["left"], "the tap outlived its last fd"
    qdiscs = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", "eth0"],
                            capture_output=True, text=True, check=True).stdout
    assert "ingress" not in qdiscs
