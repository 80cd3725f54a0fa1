"""config.json, parsed once at the boundary into frozen values.

The whole document still travels to crun in the guest (it implements the
spec in full: seccomp, capabilities, rlimits, users), so `Spec.raw` keeps it;
everything vmrt itself decides on is read into typed fields here, with the
checks that make a bad bundle fail before any VM exists.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmrt.errors import ConfigError
from vmrt.util.record import record


class Role(enum.Enum):
    SANDBOX = "sandbox"  # a pod's infra container: boots the pod VM
    CONTAINER = "container"  # joins the pod named by `Pod.sandbox`
    STANDALONE = "standalone"  # no pod annotations: a VM of its own, which others may join


@record
class Pod:
    role: Role
    sandbox: str | None = None  # the pod a CONTAINER joins (id or name)
    name: str | None = None  # a SANDBOX's name, so members may refer to it by name
    dialect: str = "none"


@record
class Mount:
    destination: str
    type: str
    source: str
    options: tuple[str, ...]

    @property
    def is_bind(self) -> bool:
        return self.type in ("bind", "rbind") or "bind" in self.options or "rbind" in self.options


@record
class Spec:
    bundle: Path
    raw: Mapping[str, Any]
    oci_version: str
    args: tuple[str, ...]
    terminal: bool
    rootfs: Path
    readonly_root: bool
    hostname: str
    mounts: tuple[Mount, ...]
    annotations: Mapping[str, str]
    pod: Pod


# (type key, sandbox value, container value, pod key on a container, name key on a sandbox)
_DIALECTS: tuple[tuple[str, str, str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("ocid", "ocid/container_type", "sandbox", "container",
     ("ocid/sandbox_name", "ocid/sandbox_id"), ("ocid/name", "ocid/sandbox_name")),
    ("cri-o", "io.kubernetes.cri-o.ContainerType", "sandbox", "container",
     ("io.kubernetes.cri-o.SandboxID", "io.kubernetes.cri-o.SandboxName"),
     ("io.kubernetes.cri-o.SandboxName",)),
    ("containerd", "io.kubernetes.cri.container-type", "sandbox", "container",
     ("io.kubernetes.cri.sandbox-id",), ("io.kubernetes.cri.sandbox-name",)),
    ("dockershim", "io.kubernetes.docker.type", "podsandbox", "container",
     ("io.kubernetes.sandbox.id",), ()),
)


def classify(annotations: Mapping[str, str]) -> Pod:
    """Tell a pod sandbox from a member from a standalone container; first dialect wins."""
    for dialect, type_key, sandbox_value, container_value, pod_keys, name_keys in _DIALECTS:
        kind = annotations.get(type_key)
        if kind is None:
            continue
        if kind == sandbox_value:
            name = next((annotations[k] for k in name_keys if annotations.get(k)), None)
            return Pod(Role.SANDBOX, name=name, dialect=dialect)
        if kind == container_value:
            ref = next((annotations[k] for k in pod_keys if annotations.get(k)), None)
            if not ref:
                raise ConfigError(f"annotation {type_key}=container names no sandbox")
            return Pod(Role.CONTAINER, sandbox=ref, dialect=dialect)
        raise ConfigError(f"annotation {type_key} has unknown value {kind!r}")
    return Pod(Role.STANDALONE)


def _expect(obj: Any, kind: type, what: str) -> Any:
    if not isinstance(obj, kind) or (kind is int and isinstance(obj, bool)):
        raise ConfigError(f"config.json: {what} must be {_KIND_NAMES.get(kind, kind.__name__)}")
    return obj


_KIND_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def _str_list(obj: Any, what: str) -> tuple[str, ...]:
    items = _expect(obj, list, what)
    for item in items:
        _expect(item, str, f"{what}[]")
    return tuple(items)


def _check_version(version: str) -> str:
    parts = version.split("-", 1)[0].split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or parts[0] != "1":
        raise ConfigError(f"config.json: unsupported ociVersion {version!r}")
    return version


def _check_executable(rootfs: str, exe: str, env: list[str] | tuple[str, ...]) -> None:
    """runc finds the program at create time; podman maps these words to exit 127."""
    from vmrt.util.rootpath import find_executable

    if find_executable(rootfs, exe, list(env)) is not None:
        return
    if "/" in exe:
        raise ConfigError(f'unable to start container process: exec: "{exe}": '
                          f"stat {exe}: no such file or directory")
    raise ConfigError(f'unable to start container process: exec: "{exe}": '
                      "executable file not found in $PATH")


def load(bundle: str | os.PathLike[str]) -> Spec:
    bundle_path = Path(os.path.abspath(bundle))
    if not bundle_path.is_dir():
        raise ConfigError(f"chdir {bundle}: no such file or directory")
    config = bundle_path / "config.json"
    try:
        text = config.read_bytes()
    except FileNotFoundError:
        raise ConfigError("JSON specification file config.json not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {config}: {exc.strerror}") from exc
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config.json is not valid JSON: {exc}") from None
    return parse(bundle_path, raw)


def parse(bundle: Path, raw: Any) -> Spec:
    doc = _expect(raw, dict, "the document")
    # runc accepts a document without ociVersion; an unknown major version is refused.
    version = _check_version(_expect(doc.get("ociVersion", "1.0.0"), str, "ociVersion"))
    process = doc.get("process")
    if process is None:
        raise ConfigError("process property must not be empty")
    process = _expect(process, dict, "process")
    args = _str_list(process.get("args"), "process.args")
    if not args:
        raise ConfigError("args must not be empty")
    cwd = _expect(process.get("cwd", "/"), str, "process.cwd")
    if not os.path.isabs(cwd):
        raise ConfigError("Cwd must be an absolute path")
    terminal = _expect(process.get("terminal", False), bool, "process.terminal")
    root = doc.get("root")
    if root is None:
        raise ConfigError("root must be specified")
    root = _expect(root, dict, "root")
    root_path = _expect(root.get("path"), str, "root.path")
    rootfs = Path(root_path) if os.path.isabs(root_path) else bundle / root_path
    if not rootfs.exists():
        raise ConfigError(f"invalid rootfs: stat {rootfs}: no such file or directory")
    if os.path.realpath(rootfs) != os.path.normpath(rootfs) or not rootfs.is_dir():
        raise ConfigError("invalid rootfs: not an absolute path, or a symlink")
    env = _str_list(process.get("env", []), "process.env")
    for var in env:
        if "=" not in var:
            raise ConfigError("unable to start container process: error during container init: "
                              f'invalid environment variable: "{var}"')
    _check_executable(str(rootfs), args[0], env)
    mounts = []
    for i, m in enumerate(_expect(doc.get("mounts", []), list, "mounts")):
        m = _expect(m, dict, f"mounts[{i}]")
        mounts.append(Mount(
            destination=_expect(m.get("destination"), str, f"mounts[{i}].destination"),
            type=_expect(m.get("type", "bind" if "bind" in m.get("options", []) else ""), str,
                         f"mounts[{i}].type"),
            source=_expect(m.get("source", ""), str, f"mounts[{i}].source"),
            options=_str_list(m.get("options", []), f"mounts[{i}].options"),
        ))
    annotations = _expect(doc.get("annotations", {}), dict, "annotations")
    for key, value in annotations.items():
        _expect(value, str, f"annotations[{key!r}]")
    return Spec(
        bundle=bundle,
        raw=doc,
        oci_version=version,
        args=args,
        terminal=terminal,
        rootfs=rootfs.resolve(),
        readonly_root=_expect(root.get("readonly", False), bool, "root.readonly"),
        hostname=_expect(doc.get("hostname", ""), str, "hostname"),
        mounts=tuple(mounts),
        annotations=dict(annotations),
        pod=classify(annotations),
    )
