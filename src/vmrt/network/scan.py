"""What CNI left in the pod's network namespace, read with pyroute2 into typed values.

pyroute2 is untyped and costs ~100 ms to import, so it is imported here, in
the functions, and only the monitor (which lives in the namespace) calls
them. Every Ethernet-like link but `lo` and vmrt's own taps is a candidate:
a veth from the bridge or ptp plugin, a macvlan, an ipvlan. Tunnel fallback
devices (`tunl0`, `sit0`, …) that a new namespace may hold have no MAC and
are not carried. What the guest kernel derives by itself is left out: IPv6
link-local addresses and the kernel's own subnet routes (`proto kernel`).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from vmrt.network.netns import TAP_PREFIX

ARPHRD_ETHER = 1
RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2
RTN_UNICAST = 1


@dataclass(frozen=True)
class Address:
    family: int  # 4 or 6
    address: str
    prefixlen: int

    def to_wire(self) -> dict[str, Any]:
        return {"family": self.family, "address": self.address, "prefixlen": self.prefixlen}


@dataclass(frozen=True)
class Route:
    family: int
    dst: str  # "" for the default route
    dst_len: int
    gateway: str  # "" for a link route
    scope: int
    priority: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"family": self.family, "dst": self.dst, "dst_len": self.dst_len,
                "gateway": self.gateway, "scope": self.scope, "priority": self.priority}


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    mac: str
    mtu: int
    kind: str  # "veth", "macvlan", "ipvlan", … ("" when the kernel does not say)
    addresses: tuple[Address, ...]
    routes: tuple[Route, ...]

    def to_wire(self) -> dict[str, Any]:
        """The `setup_network` entry the agent gets (docs/agent-protocol.md)."""
        return {"name": self.name, "mac": self.mac, "mtu": self.mtu,
                "addresses": [a.to_wire() for a in self.addresses],
                "routes": [r.to_wire() for r in self.routes]}


def _family(af: int) -> int:
    return 6 if af == socket.AF_INET6 else 4


def _address(msg: Any) -> Address | None:
    text = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
    if not text:
        return None
    ip = ipaddress.ip_address(text)
    if ip.version == 6 and ip.is_link_local:
        return None  # the guest makes its own from the NIC's MAC, which is the same
    return Address(ip.version, str(ip), int(msg["prefixlen"]))


def _route(msg: Any) -> Route | None:
    if msg["proto"] == RTPROT_KERNEL or msg["type"] != RTN_UNICAST:
        return None  # the guest's kernel adds these itself when the address goes on
    dst = msg.get("RTA_DST") or ""
    gateway = msg.get("RTA_GATEWAY") or ""
    if dst and ipaddress.ip_address(dst).is_link_local:
        return None
    return Route(_family(msg["family"]), dst, int(msg["dst_len"]), gateway, int(msg["scope"]),
                 int(msg.get("RTA_PRIORITY") or 0))


def _interface(ipr: Any, link: Any) -> Interface:
    index = int(link["index"])
    addresses = tuple(a for msg in ipr.get_addr(index=index)
                      if (a := _address(msg)) is not None)
    routes = tuple(r for family in (socket.AF_INET, socket.AF_INET6)
                   for msg in ipr.get_routes(family=family, table=RT_TABLE_MAIN, oif=index)
                   if (r := _route(msg)) is not None)
    return Interface(
        name=str(link.get("IFLA_IFNAME")), index=index, mac=str(link.get("IFLA_ADDRESS")),
        mtu=int(link.get("IFLA_MTU") or 1500),
        kind=str(link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""),
        addresses=addresses, routes=routes)


def scan() -> list[Interface]:
    """Every interface of the calling thread's network namespace that a VM should carry."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return sorted(
            (_interface(ipr, link) for link in ipr.get_links()
             if link["ifi_type"] == ARPHRD_ETHER
             and link.get("IFLA_IFNAME") != "lo"
             and not str(link.get("IFLA_IFNAME")).startswith(TAP_PREFIX)),
            key=lambda i: i.index)
