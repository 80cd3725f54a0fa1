"""The host's config.json, rewritten for crun in the guest.

Pure: values in, document out. What names the host (paths of namespaces,
hooks that run host binaries, cgroup paths of the host's manager, LSM
labels the guest has no policy for) is replaced by its guest meaning; every
other field travels unchanged, because crun implements the spec in full.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from vmrt.oci import Role, Spec
from vmrt.util.record import record

GUEST_SHARES = "/run/vmrt/shares"


@record
class GuestBind:
    name: str  # entry in the share's staging dir
    source: str  # host path


@record
class GuestSpec:
    spec: dict[str, Any]
    binds: tuple[GuestBind, ...]
    #: The hostname the VM takes (the pod's UTS namespace is the VM's), if this
    #: container names the pod's hostname.
    pod_hostname: str = ""


#: The pod's /dev/shm: one guest directory bound into every member.
POD_SHM = "/run/vmrt/pod/shm"
#: Namespaces a pod shares: the VM's own. A member that names one by path (the
#: infra container's /proc/<pid>/ns/...) joins the VM's; so does a sandbox.
POD_NAMESPACES = frozenset({"network", "ipc", "uts"})
#: A member's pid namespace named by path is the infra container's: the monitor, which
#: knows the infra's pid in the guest, puts its /proc/<pid>/ns/pid here.
JOIN_SANDBOX = "vmrt:sandbox"


def share_dir(container_id: str) -> str:
    return f"{GUEST_SHARES}/{container_id}"


def _namespaces(namespaces: list[dict[str, Any]], role: Role) -> list[dict[str, Any]]:
    kept = []
    for ns in namespaces:
        kind = ns.get("type")
        if kind == "network":
            continue  # the pod's network is the VM's: the agent puts CNI's NICs there
        if kind in POD_NAMESPACES and ("path" in ns or role is Role.SANDBOX):
            continue  # shared with the pod, i.e. the VM's own
        if kind == "pid" and "path" in ns and role is Role.CONTAINER:
            kept.append({"type": "pid", "path": JOIN_SANDBOX})
            continue
        if "path" in ns:
            continue  # a host path means nothing in the guest
        kept.append({k: v for k, v in ns.items() if k != "path"})
    return kept


def build(spec: Spec, container_id: str) -> GuestSpec:
    doc: dict[str, Any] = copy.deepcopy(dict(spec.raw))
    doc["ociVersion"] = spec.oci_version
    base = share_dir(container_id)
    doc["root"] = {**doc.get("root", {}), "path": f"{base}/rootfs"}
    binds: list[GuestBind] = []
    mounts = []
    for i, (mount, raw) in enumerate(zip(spec.mounts, doc.get("mounts", []), strict=True)):
        raw = dict(raw)
        if os.path.normpath(mount.destination) == "/dev/shm":
            raw = {"destination": "/dev/shm", "type": "bind", "source": POD_SHM,
                   "options": ["rbind", "nosuid", "nodev", "noexec"]}
        elif mount.is_bind and os.path.isabs(mount.source):
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
    linux["namespaces"] = _namespaces(linux.get("namespaces", []), spec.pod.role)
    pod_hostname = ""
    if spec.pod.role in (Role.SANDBOX, Role.STANDALONE):
        pod_hostname = spec.hostname
    if not any(ns.get("type") == "uts" for ns in linux["namespaces"]):
        # crun may set a hostname only in a UTS namespace of the container's own.
        doc.pop("hostname", None)
    return GuestSpec(doc, tuple(binds), pod_hostname)
