"""Least privilege on a live VM: what --root holds is root's alone, QEMU runs under
seccomp, and a --root whose path carries commas and `=` cannot add options to QEMU's or
virtiofsd's command lines (the container still runs, from the right files)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from helpers.runtime import Runtime

pytestmark = pytest.mark.vm


def _modes(root: Path) -> dict[str, int]:
    """Mode of --root and of everything under it, except inside share staging dirs
    (mount points that carry the container's own files)."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if "shares" in rel.parts[:-1]:
            continue
        out[str(rel)] = stat.S_IMODE(path.lstat().st_mode)
    return out


def test_root_is_private_and_qemu_sandboxed(runtime: Runtime, bundle, new_id) -> None:
    rt = runtime
    cid = new_id()
    rt.ok("run", "--detach", "--bundle", str(bundle(["sleep", "1000"])), cid)
    try:
        modes = _modes(rt.root)
        wrong = {}
        for rel, mode in modes.items():
            path = rt.root / rel
            want = 0o700 if path.is_dir() and not path.is_symlink() else 0o600
            if mode != want:
                wrong[rel] = oct(mode)
        assert wrong == {}, f"not private: {wrong}"
        assert stat.S_ISSOCK((rt.root / "sandboxes" / cid / "monitor.sock").lstat().st_mode)
        sb = json.loads((rt.root / "sandboxes" / cid / "sandbox.json").read_text())
        status = Path(f"/proc/{sb['qemu']['pid']}/status").read_text()
        assert "\nSeccomp:\t2\n" in status, "QEMU runs without its seccomp sandbox"
    finally:
        rt.ok("delete", "--force", cid)


def test_root_with_commas(runtime: Runtime, bundle, new_id, short_tmp: Path) -> None:
    rt = Runtime(runtime.spec, root=short_tmp / "r,x=1,,y", log=short_tmp / "log2.json")
    b = bundle(["cat", "/probe"])
    (b / "rootfs" / "probe").write_text("from the host's rootfs\n")
    res = rt.run("run", "--bundle", str(b), new_id())
    assert res.returncode == 0, res
    assert res.stdout == "from the host's rootfs\n", res
    assert rt.list_ids() == []
