"""``setup_network``: give the hot-plugged NICs the pod's addresses, routes and MTU.

The host hot-plugs one virtio-net NIC per interface CNI made in the pod's
network namespace, with that interface's MAC, then sends the interface's
configuration.  The agent finds each NIC by MAC (waiting, bounded, for the
PCI device to be probed: there is no udev to announce it), names it as CNI
named the interface (``eth0``), sets the MTU, brings it up, adds the
addresses, and once every NIC is up adds the routes (a gateway may be
reachable only through another NIC's subnet).  Containers share the VM's
network namespace, so this *is* the pod's network.

Everything comes from the host and is checked first: MACs, names, address
families and prefix lengths, counts.  DNS is not handled here: the container
managers bind-mount their own ``/etc/resolv.conf`` into the containers, and it
travels with the container's share.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Final

from vmrt_agent.errors import AgentError, InvalidError
from vmrt_agent.netlink import Netlink
from vmrt_agent.protocol import ProtocolError, get_int, get_str

log = logging.getLogger(__name__)

SYS_NET: Final = "/sys/class/net"
#: How long a hot-plugged NIC gets to appear.
APPEAR_TIMEOUT: Final = 10.0
MAX_INTERFACES: Final = 16
MAX_ENTRIES: Final = 64  # addresses, and routes, per interface
_MAC_RE: Final = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
#: What the kernel accepts as a name (dev_valid_name), without the whitespace and ':'.
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.@-]{1,15}")


@dataclass(frozen=True, slots=True)
class Address:
    address: str
    prefixlen: int


@dataclass(frozen=True, slots=True)
class Route:
    family: int
    dst: str
    dst_len: int
    gateway: str
    scope: int
    priority: int


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    name: str
    mac: str
    mtu: int
    addresses: tuple[Address, ...]
    routes: tuple[Route, ...]


def _ip(text: str, family: int, what: str) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidError(f"{what}: {text!r} is not an IP address") from None
    if ip.version != family:
        raise InvalidError(f"{what}: {text} is not IPv{family}")
    return str(ip)


def _family(entry: dict[str, Any]) -> int:
    family = get_int(entry, "family", lo=4, hi=6)
    if family not in (4, 6):
        raise InvalidError(f"unknown address family {family}")
    return family


def _entries(raw: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = raw.get(key, [])
    if not isinstance(items, list) or len(items) > MAX_ENTRIES:
        raise InvalidError(f"{key} must be a list of at most {MAX_ENTRIES}")
    if not all(isinstance(item, dict) for item in items):
        raise InvalidError(f"{key} must hold objects")
    return items


def parse(raw: Any) -> InterfaceConfig:
    """One entry of ``interfaces``, checked."""
    if not isinstance(raw, dict):
        raise InvalidError("an interface must be an object")
    mac = get_str(raw, "mac", max_len=17).lower()
    if not _MAC_RE.fullmatch(mac):
        raise InvalidError(f"invalid MAC address {mac!r}")
    name = get_str(raw, "name", max_len=15)
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise InvalidError(f"invalid interface name {name!r}")
    addresses = []
    for entry in _entries(raw, "addresses"):
        family = _family(entry)
        addresses.append(Address(_ip(get_str(entry, "address", max_len=64), family, "address"),
                                 get_int(entry, "prefixlen", lo=0, hi=32 if family == 4 else 128)))
    routes = []
    for entry in _entries(raw, "routes"):
        family = _family(entry)
        dst = get_str(entry, "dst", max_len=64, default="")
        gateway = get_str(entry, "gateway", max_len=64, default="")
        routes.append(Route(
            family=family,
            dst=_ip(dst, family, "route") if dst else "",
            dst_len=get_int(entry, "dst_len", lo=0, hi=32 if family == 4 else 128),
            gateway=_ip(gateway, family, "gateway") if gateway else "",
            scope=get_int(entry, "scope", lo=0, hi=255),
            priority=get_int(entry, "priority", lo=0, hi=2**32 - 1) if "priority" in entry else 0))
    return InterfaceConfig(name, mac, get_int(raw, "mtu", lo=68, hi=65535),
                           tuple(addresses), tuple(routes))


def parse_all(raw: Any) -> list[InterfaceConfig]:
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_INTERFACES:
        raise InvalidError(f"interfaces must be a list of 1 to {MAX_INTERFACES}")
    try:
        configs = [parse(item) for item in raw]
    except ProtocolError as exc:
        raise InvalidError(str(exc)) from exc
    if len({c.mac for c in configs}) != len(configs):
        raise InvalidError("two interfaces with the same MAC address")
    return configs


def _links(sys_net: str) -> dict[str, tuple[str, int]]:
    """MAC -> (name, ifindex) of every link now present."""
    found: dict[str, tuple[str, int]] = {}
    for name in os.listdir(sys_net):
        try:
            with open(os.path.join(sys_net, name, "address")) as f:
                mac = f.read().strip().lower()
            with open(os.path.join(sys_net, name, "ifindex")) as f:
                index = int(f.read())
        except (OSError, ValueError):
            continue  # went away while we looked
        found.setdefault(mac, (name, index))
    return found


async def wait_for_links(macs: list[str], *, sys_net: str = SYS_NET,
                         timeout: float = APPEAR_TIMEOUT) -> dict[str, tuple[str, int]]:
    """Each MAC's (name, ifindex), once every one of them is there; bounded."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        links = _links(sys_net)
        missing = [mac for mac in macs if mac not in links]
        if not missing:
            return {mac: links[mac] for mac in macs}
        if time.monotonic() >= deadline:
            raise AgentError(f"no NIC with MAC {', '.join(missing)} appeared in {timeout:g}s")
        # Polling is the only signal without udev; bounded above.
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


def configure(configs: list[InterfaceConfig], links: dict[str, tuple[str, int]],
              nl: Netlink) -> list[str]:
    """Apply ``configs`` to the links found for them; return the names they end up with."""
    names = []
    taken = {name for name, _ in links.values()}
    for config in configs:
        name, index = links[config.mac]
        if config.name != name and config.name not in taken:
            # A link is renamed while down; a new NIC is down until we bring it up.
            nl.set_link(index, up=False)
            nl.set_link(index, name=config.name)
            taken.add(config.name)
            name = config.name
        nl.set_link(index, mtu=config.mtu, up=True)
        for addr in config.addresses:
            nl.add_address(index, addr.address, addr.prefixlen)
        names.append(name)
    for config in configs:  # routes last: a gateway may sit in another NIC's subnet
        _, index = links[config.mac]
        for route in sorted(config.routes, key=lambda r: bool(r.gateway)):
            nl.add_route(index, family=route.family, dst=route.dst, dst_len=route.dst_len,
                         gateway=route.gateway, scope=route.scope, priority=route.priority)
    return names


async def setup(configs: list[InterfaceConfig], *, sys_net: str = SYS_NET,
                timeout: float = APPEAR_TIMEOUT) -> list[str]:
    links = await wait_for_links([c.mac for c in configs], sys_net=sys_net, timeout=timeout)
    try:
        with Netlink() as nl:
            names = configure(configs, links, nl)
    except OSError as exc:
        raise AgentError(f"cannot configure the network: {exc.strerror or exc}") from exc
    log.info("network up: %s", ", ".join(names))
    return names
