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
    assert g.spec["linux"]["namespaces"] == [{"type": "pid"}, {"type": "ipc"}]
    assert doc["linux"]["namespaces"][1]["path"] == "/proc/1/ns/net"  # input untouched
