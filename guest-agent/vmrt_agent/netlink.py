"""rtnetlink requests through the stdlib's ``socket.AF_NETLINK``: no ``ip`` binary, no parsing.

Just the few messages the agent sends to configure a NIC (RTM_NEWLINK to
rename it, set its MTU and bring it up; RTM_NEWADDR; RTM_NEWROUTE), each
acknowledged by the kernel (NLM_F_ACK) and turned into ``OSError`` with the
kernel's errno on failure.  Addresses and routes are sent with NLM_F_REPLACE
so that a repeated request (the host retrying ``setup_network``) is not an
error.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
import struct
from typing import Final

NETLINK_ROUTE: Final = 0
NLMSG_ERROR: Final = 2
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_REPLACE: Final = 0x100
NLM_F_CREATE: Final = 0x400
RTM_NEWLINK: Final = 16
RTM_NEWADDR: Final = 20
RTM_NEWROUTE: Final = 24
IFLA_IFNAME: Final = 3
IFLA_MTU: Final = 4
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
RTA_DST: Final = 1
RTA_OIF: Final = 4
RTA_GATEWAY: Final = 5
RTA_PRIORITY: Final = 6
RT_TABLE_MAIN: Final = 254
RTPROT_BOOT: Final = 3
RTN_UNICAST: Final = 1
IFF_UP: Final = 0x1
RT_SCOPE_UNIVERSE: Final = 0
RT_SCOPE_LINK: Final = 253

_NLMSGHDR: Final = struct.Struct("=IHHII")
_IFINFOMSG: Final = struct.Struct("=BxHiII")
_IFADDRMSG: Final = struct.Struct("=BBBBI")
_RTMSG: Final = struct.Struct("=BBBBBBBBI")
_RTATTR: Final = struct.Struct("=HH")
_ERR: Final = struct.Struct("=i")


def _attr(kind: int, data: bytes) -> bytes:
    raw = _RTATTR.pack(_RTATTR.size + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _family(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


class Netlink:
    """One rtnetlink socket; each call is one request and its acknowledgement."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._sock.settimeout(5.0)
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, msg_type: int, flags: int, body: bytes, what: str) -> None:
        seq = next(self._seq)
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type,
                                NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0)
        self._sock.send(header + body)
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _, got_seq, _ = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    raise OSError(0, f"{what}: malformed netlink answer")
                if kind == NLMSG_ERROR and got_seq == seq:
                    (err,) = _ERR.unpack_from(data, offset + _NLMSGHDR.size)
                    if err:
                        raise OSError(-err, f"{what}: {os.strerror(-err)}")
                    return
                offset += (length + 3) & ~3

    def set_link(self, index: int, *, name: str | None = None, mtu: int | None = None,
                 up: bool | None = None) -> None:
        flags = IFF_UP if up else 0
        change = IFF_UP if up is not None else 0
        attrs = b""
        if name is not None:
            attrs += _attr(IFLA_IFNAME, name.encode() + b"\0")
        if mtu is not None:
            attrs += _attr(IFLA_MTU, struct.pack("=I", mtu))
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change) + attrs
        self._request(RTM_NEWLINK, 0, body, f"configure link {index}")

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        ip = ipaddress.ip_address(address)
        body = _IFADDRMSG.pack(_family(ip), prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_LOCAL, ip.packed) + _attr(IFA_ADDRESS, ip.packed)
        self._request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body,
                      f"add address {address}/{prefixlen}")

    def add_route(self, index: int, *, family: int, dst: str, dst_len: int, gateway: str,
                  scope: int, priority: int = 0) -> None:
        af = socket.AF_INET6 if family == 6 else socket.AF_INET
        body = _RTMSG.pack(af, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0)
        if dst:
            body += _attr(RTA_DST, ipaddress.ip_address(dst).packed)
        if gateway:
            body += _attr(RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
        if priority:
            body += _attr(RTA_PRIORITY, struct.pack("=I", priority))
        body += _attr(RTA_OIF, struct.pack("=i", index))
        target = f"{dst or 'default'}/{dst_len}" + (f" via {gateway}" if gateway else "")
        self._request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body, f"add route {target}")
