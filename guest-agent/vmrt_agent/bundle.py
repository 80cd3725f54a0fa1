"""The guest bundle: the host's spec, confined to the container's share, on disk.

The host names guest paths in the spec (``root.path``, bind-mount sources), and
the agent does not take them on trust: a buggy or compromised host must not be
able to hand a container the guest's own ``/`` or ``/run/vmrt``.  Every such
path is resolved the way crun will resolve it (relative to the bundle, symlinks
followed) and refused unless it lands inside ``/run/vmrt/shares/<id>/``.  The
resolved path is what goes into config.json, which narrows (but, since the
host controls the share's contents, cannot close) the window for swapping a
directory for a symlink after the check.
"""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any, Final

from vmrt_agent.errors import InvalidError

#: runc's id rule (the host's ``vmrt.ids`` applies the same one).  fullmatch, not
#: ``$``: ``$`` also matches before a final newline, and "a\n" is no id.
_ID_RE: Final = re.compile(r"[\w+\-.]+", re.ASCII)
MAX_ID_LEN: Final = 1024
#: A virtio-fs tag is at most 36 bytes; the same charset keeps it a safe file name.
MAX_TAG_LEN: Final = 36
_BIND_OPTIONS: Final = frozenset({"bind", "rbind"})


def validate_id(container_id: str) -> str:
    if (not container_id or len(container_id) > MAX_ID_LEN
            or container_id in (".", "..") or not _ID_RE.fullmatch(container_id)):
        raise InvalidError(f"invalid container id {container_id[:64]!r}")
    return container_id


def validate_tag(tag: str) -> str:
    if not tag or len(tag) > MAX_TAG_LEN or tag in (".", "..") or not _ID_RE.fullmatch(tag):
        raise InvalidError(f"invalid share tag {tag[:64]!r}")
    return tag


#: Guest directories every container of the pod may bind: the pod's shared /dev/shm.
POD_SHARED: tuple[str, ...] = ("/run/vmrt/pod/shm",)


def confine(path: str, *, share: str, bundle_dir: str, what: str) -> str:
    """Resolve ``path`` as crun would and require it inside ``share``.

    :raise InvalidError: the path escapes, by ``..``, by a symlink, or by
        simply naming somewhere else.
    """
    root = os.path.realpath(share)
    resolved = os.path.realpath(os.path.join(bundle_dir, path))
    if resolved != root and not resolved.startswith(root + os.sep):
        raise InvalidError(f"{what} {path[:256]!r} is outside the container's share")
    return resolved


def _is_bind(mount: dict[str, Any]) -> bool:
    options = mount.get("options", [])
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise InvalidError("spec mount options must be a list of strings")
    return mount.get("type") == "bind" or bool(_BIND_OPTIONS.intersection(options))


def prepare_spec(spec: dict[str, Any], *, share: str, bundle_dir: str,
                 terminal: bool) -> dict[str, Any]:
    """Return the spec crun will run: paths confined and resolved, ``terminal`` applied.

    ``process.terminal`` is set from the request's ``terminal`` argument so the
    spec and the ``--console-socket`` decision cannot disagree.
    """
    spec = copy.deepcopy(spec)
    root = spec.get("root")
    if not isinstance(root, dict) or not isinstance(root.get("path"), str):
        raise InvalidError("spec root.path must be a string")
    root["path"] = confine(root["path"], share=share, bundle_dir=bundle_dir, what="root.path")
    mounts = spec.get("mounts", [])
    if not isinstance(mounts, list):
        raise InvalidError("spec mounts must be a list")
    for index, mount in enumerate(mounts):
        if not isinstance(mount, dict):
            raise InvalidError("spec mounts must be objects")
        if _is_bind(mount):
            source = mount.get("source")
            if not isinstance(source, str):
                raise InvalidError(f"spec mounts[{index}].source must be a string")
            if source in POD_SHARED:
                os.makedirs(source, mode=0o1777, exist_ok=True)
                continue
            mount["source"] = confine(source, share=share, bundle_dir=bundle_dir,
                                      what=f"bind mount source mounts[{index}].source")
    process = spec.get("process")
    if not isinstance(process, dict):
        raise InvalidError("spec process must be an object")
    process["terminal"] = terminal
    return spec


def write_bundle(bundle_dir: str, spec: dict[str, Any]) -> str:
    """Create the bundle directory (it must not exist) and its config.json."""
    os.makedirs(os.path.dirname(bundle_dir), mode=0o700, exist_ok=True)
    os.mkdir(bundle_dir, 0o700)
    path = os.path.join(bundle_dir, "config.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(spec, out)
    return path
