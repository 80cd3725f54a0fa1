"""config.json parsing and the pod classification across every CRI dialect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmrt import oci
from vmrt.errors import ConfigError
from vmrt.oci import Role


@pytest.mark.parametrize(("annotations", "role", "ref"), [
    ({}, Role.STANDALONE, None),
    ({"ocid/container_type": "sandbox", "ocid/name": "pod1"}, Role.SANDBOX, None),
    ({"ocid/container_type": "container", "ocid/sandbox_name": "pod1"}, Role.CONTAINER, "pod1"),
    ({"io.kubernetes.cri-o.ContainerType": "sandbox"}, Role.SANDBOX, None),
    ({"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": "abc"},
     Role.CONTAINER, "abc"),
    ({"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "x1"},
     Role.CONTAINER, "x1"),
    ({"io.kubernetes.docker.type": "podsandbox"}, Role.SANDBOX, None),
    ({"io.kubernetes.docker.type": "container", "io.kubernetes.sandbox.id": "d1"},
     Role.CONTAINER, "d1"),
])
def test_classify(annotations: dict[str, str], role: Role, ref: str | None) -> None:
    pod = oci.classify(annotations)
    assert pod.role is role
    assert pod.sandbox == ref


def test_sandbox_name_is_kept_for_lookup_by_name() -> None:
    pod = oci.classify({"ocid/container_type": "sandbox", "ocid/name": "web"})
    assert pod.name == "web"


def test_member_without_pod_is_refused() -> None:
    with pytest.raises(ConfigError, match="names no sandbox"):
        oci.classify({"io.kubernetes.cri-o.ContainerType": "container"})


def _bundle(tmp_path: Path, doc: object) -> Path:
    (tmp_path / "rootfs" / "bin").mkdir(parents=True, exist_ok=True)
    (tmp_path / "rootfs" / "bin" / "sh").touch(mode=0o755)
    (tmp_path / "config.json").write_text(json.dumps(doc))
    return tmp_path


GOOD = {"ociVersion": "1.0.2", "process": {"args": ["sh"]}, "root": {"path": "rootfs"}}


@pytest.mark.parametrize(("doc", "message"), [
    ([], "the document must be an object"),
    ({**GOOD, "ociVersion": "2.0.0"}, "unsupported ociVersion"),
    ({**GOOD, "ociVersion": 1}, "ociVersion must be a string"),
    ({k: v for k, v in GOOD.items() if k != "process"}, "process property must not be empty"),
    ({k: v for k, v in GOOD.items() if k != "root"}, "root must be specified"),
    ({**GOOD, "process": {"args": []}}, "args must not be empty"),
    ({**GOOD, "process": {"args": "sh"}}, "process.args must be an array"),
    ({**GOOD, "root": {"path": "nope"}}, "no such file or directory"),
    ({**GOOD, "mounts": [{"destination": 3}]}, "destination must be a string"),
    ({**GOOD, "annotations": {"a": 1}}, "must be a string"),
])
def test_bad_documents(tmp_path: Path, doc: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        oci.load(_bundle(tmp_path, doc))


def test_truncated_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(GOOD)[:20])
    with pytest.raises(ConfigError, match="not valid JSON"):
        oci.load(tmp_path)


def test_program_is_looked_up_in_the_rootfs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match='exec: "nope": executable file not found in \\$PATH'):
        oci.load(_bundle(tmp_path, {**GOOD, "process": {"args": ["nope"]}}))
    # a link that is absolute *inside* the image resolves inside it, not on the host
    (tmp_path / "rootfs" / "usr").mkdir()
    (tmp_path / "rootfs" / "usr" / "sbin").symlink_to("/bin")
    spec = oci.load(_bundle(tmp_path, {**GOOD, "process": {"args": ["/usr/sbin/sh"]}}))
    assert spec.args == ("/usr/sbin/sh",)


def test_good_document(tmp_path: Path) -> None:
    spec = oci.load(_bundle(tmp_path, GOOD))
    assert spec.args == ("sh",)
    assert spec.rootfs == (tmp_path / "rootfs").resolve()
    assert spec.pod.role is Role.STANDALONE
