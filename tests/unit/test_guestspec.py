"""What the guest's crun is given: host-only fields gone, binds moved under the share."""

from __future__ import annotations

import json
from pathlib import Path

from vmrt import oci
from vmrt.runtime import guestspec


def test_guest_spec(tmp_path: Path) -> None:
    (tmp_path / "rootfs" / "bin").mkdir(parents=True)
    (tmp_path / "rootfs" / "bin" / "sh").touch(mode=0o755)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    doc = {
        "ociVersion": "1.0.2", "process": {"args": ["sh"], "apparmorProfile": "p"},
        "root": {"path": "rootfs", "readonly": True},
        "hooks": {"prestart": [{"path": "/usr/bin/x"}]},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/etc/hosts", "type": "bind", "source": str(hosts),
                    "options": ["rbind", "ro"]}],
        "linux": {"cgroupsPath": "machine.slice:libpod:abc",
                  "namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"},
                                 {"type": "ipc", "path": "/proc/9/ns/ipc"}]},
    }
    (tmp_path / "config.json").write_text(json.dumps(doc))
    g = guestspec.build(oci.load(tmp_path), "c1")
    assert g.spec["root"] == {"path": "/run/vmrt/shares/c1/rootfs", "readonly": True}
    assert g.spec["mounts"][0]["source"] == "proc"
    assert g.spec["mounts"][1]["source"] == "/run/vmrt/shares/c1/m1"
    assert g.binds == (guestspec.GuestBind("m1", str(hosts)),)
    assert "hooks" not in g.spec and "apparmorProfile" not in g.spec["process"]
    assert g.spec["linux"]["cgroupsPath"] == "/vmrt/c1"
    # ipc named by path: the pod's, i.e. the VM's own; network: always the VM's
    assert g.spec["linux"]["namespaces"] == [{"type": "pid"}]
    assert doc["linux"]["namespaces"][1]["path"] == "/proc/1/ns/net"  # input untouched


def _pod_bundle(tmp_path: Path, annotations: dict[str, str], namespaces: list[dict[str, str]],
                shm_source: str) -> Path:
    (tmp_path / "rootfs" / "bin").mkdir(parents=True)
    (tmp_path / "rootfs" / "bin" / "sh").touch(mode=0o755)
    doc = {"ociVersion": "1.0.2", "process": {"args": ["sh"]}, "root": {"path": "rootfs"},
           "hostname": "pod-a", "annotations": annotations,
           "mounts": [{"destination": "/dev/shm", "type": "bind", "source": shm_source,
                       "options": ["rbind"]}],
           "linux": {"namespaces": namespaces}}
    (tmp_path / "config.json").write_text(json.dumps(doc))
    return tmp_path


def test_sandbox_lives_in_the_vms_namespaces(tmp_path: Path) -> None:
    b = _pod_bundle(tmp_path, {"io.kubernetes.cri-o.ContainerType": "sandbox"},
                    [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")], str(tmp_path))
    g = guestspec.build(oci.load(b), "infra")
    assert g.spec["linux"]["namespaces"] == [{"type": "pid"}, {"type": "mount"}]
    assert g.pod_hostname == "pod-a"  # the VM takes the pod's hostname
    assert "hostname" not in g.spec  # crun could not set it without a UTS namespace
    assert g.spec["mounts"][0]["source"] == guestspec.POD_SHM and not g.binds


def test_member_joins_by_path_and_keeps_private_ones(tmp_path: Path) -> None:
    b = _pod_bundle(tmp_path, {"io.kubernetes.cri-o.ContainerType": "container",
                               "io.kubernetes.cri-o.SandboxID": "infra"},
                    [{"type": "pid", "path": "/proc/7/ns/pid"},
                     {"type": "ipc", "path": "/proc/7/ns/ipc"},
                     {"type": "uts", "path": "/proc/7/ns/uts"}, {"type": "mount"}],
                    str(tmp_path))
    g = guestspec.build(oci.load(b), "c1")
    # the infra's pid namespace: its guest path is filled in by the monitor
    assert g.spec["linux"]["namespaces"] == [{"type": "pid", "path": guestspec.JOIN_SANDBOX},
                                             {"type": "mount"}]
    assert g.pod_hostname == ""  # a member does not rename the pod
    assert g.spec["mounts"][0]["source"] == guestspec.POD_SHM
