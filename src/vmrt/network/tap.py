"""A tap beside a CNI interface, with tc redirecting every frame between the two.

This is Kata's default `tcfilter` model: an ingress qdisc on each side and a
u32 filter that matches everything with a `mirred egress redirect` to the
other side. The namespace's own stack never sees the pod's traffic any more;
the guest, whose NIC has the CNI interface's MAC and addresses, does. Nothing
is bridged, nothing is NATed, and the CNI interface is left as CNI made it,
for CNI's DEL to remove.

The tap is not persistent: it exists while an fd on it is open. The monitor
opens it, hands the fd to QEMU (QMP `getfd`) and closes its own copy, so the
tap — and the filter on it — goes when QEMU lets go of it (`netdev_del`, or
QEMU's death). Only the filter on the CNI interface needs an explicit undo.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from typing import Any

from vmrt.errors import SandboxError

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000  # QEMU sees it and turns on checksum/segmentation offloads
INGRESS = 0xFFFF0000
ETH_P_ALL = 0x0003
PRIO = 49152
FLOWID = 0x10001  # 1:1, as tc(8) and Kata write it


def _open(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF,
                    struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    except OSError:
        os.close(fd)
        raise
    return fd


def _redirect(ipr: Any, src: int, dst: int) -> None:
    """Every frame arriving on `src` leaves through `dst`."""
    ipr.tc("add", "ingress", src, "ffff:")
    ipr.tc("add-filter", "u32", src, parent=INGRESS, protocol=ETH_P_ALL, prio=PRIO,
           target=FLOWID, keys=["0x0/0x0+0"],
           action=[{"kind": "mirred", "direction": "egress", "action": "redirect",
                    "ifindex": dst}])


def _has_ingress(ipr: Any, index: int) -> bool:
    return any(q.get("TCA_KIND") == "ingress" for q in ipr.get_qdiscs(index))


def create(name: str, iface_index: int, mtu: int) -> int:
    """Make tap `name`, redirect both ways between it and `iface_index`; return its fd.

    Undoes itself on failure. An interface that already has an ingress qdisc is
    refused: its traffic belongs to someone else (another VM, a CNI plugin).
    """
    from pyroute2 import IPRoute

    fd = _open(name)
    try:
        with IPRoute() as ipr:
            if _has_ingress(ipr, iface_index):
                raise SandboxError("its ingress is already redirected (carried by another VM?)")
            (tap_index,) = ipr.link_lookup(ifname=name)
            ipr.link("set", index=tap_index, mtu=mtu, state="up")
            _redirect(ipr, tap_index, iface_index)
            try:
                _redirect(ipr, iface_index, tap_index)
            except BaseException:
                with contextlib.suppress(Exception):
                    ipr.tc("del", "ingress", iface_index, "ffff:")
                raise
    except BaseException:
        os.close(fd)  # the tap, and the filter on it, go with the last fd
        raise
    return fd


def remove_redirect(iface_name: str) -> bool:
    """Drop the ingress qdisc (and so the filter) vmrt put on a CNI interface.

    False when the interface is gone (CNI's DEL, or its namespace, took it).
    """
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=iface_name)
        if not found or not _has_ingress(ipr, found[0]):
            return False
        ipr.tc("del", "ingress", found[0], "ffff:")
        return True
