"""The host's config.json, rewritten for crun in the guest.

Pure: values in, document out. What names the host (paths of namespaces,
hooks that run host binaries, cgroup paths of the host's manager, LSM
labels the guest has no policy for) is replaced by its guest meaning; every
other field travels unchanged, because crun implements the spec in full.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

from vmrt.oci import Spec

GUEST_SHARES = "/run/vmrt/shares"


@dataclass(frozen=True)
class GuestBind:
    name: str  # entry in the share's staging dir
    source: str  # host path


@dataclass(frozen=True)
class GuestSpec:
    spec: dict[str, Any]
    binds: tuple[GuestBind, ...]


def share_dir(container_id: str) -> str:
    return f"{GUEST_SHARES}/{container_id}"


def build(spec: Spec, container_id: str) -> GuestSpec:
    doc: dict[str, Any] = copy.deepcopy(dict(spec.raw))
    doc["ociVersion"] = spec.oci_version
    base = share_dir(container_id)
    doc["root"] = {**doc.get("root", {}), "path": f"{base}/rootfs"}
    binds: list[GuestBind] = []
    mounts = []
    for i, (mount, raw) in enumerate(zip(spec.mounts, doc.get("mounts", []), strict=True)):
        raw = dict(raw)
        if mount.is_bind and os.path.isabs(mount.source):
            name = f"m{i}"
            binds.append(GuestBind(name, mount.source))
            raw["source"] = f"{base}/{name}"
        mounts.append(raw)
    doc["mounts"] = mounts
    doc.pop("hooks", None)
    process = doc.get("process", {})
    process.pop("apparmorProfile", None)
    process.pop("selinuxLabel", None)
    linux = doc.setdefault("linux", {})
    linux.pop("mountLabel", None)
    linux["cgroupsPath"] = f"/vmrt/{container_id}"
    # The pod's network is the VM's: a container joins the guest's network namespace
    # (where the agent puts the pod's NICs) instead of getting an empty one.
    linux["namespaces"] = [
        {k: v for k, v in ns.items() if k != "path"}
        for ns in linux.get("namespaces", [])
        if ns.get("type") != "network"
    ]
    return GuestSpec(doc, tuple(binds))
