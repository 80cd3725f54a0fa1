"""The guest agent's pure parts, in-process: ids, spec confinement, exit statuses, the writer.

Nothing here spawns a process or touches SIGCHLD; the agent's process
handling is exercised end to end in test_agent_port.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

AGENT_DIR = Path(__file__).resolve().parents[2] / "guest-agent"
if str(AGENT_DIR) not in sys.path:
    sys.path.insert(0, str(AGENT_DIR))

from vmrt_agent import bundle, containers, port, reaper, sysinit  # noqa: E402
from vmrt_agent.errors import InvalidError  # noqa: E402
from vmrt_agent.protocol import Decoder, FrameType, encode_frame  # noqa: E402


@pytest.mark.parametrize("cid", ["abc", "a.b-c_d+e", "x" * 1024])
def test_valid_ids(cid: str) -> None:
    assert bundle.validate_id(cid) == cid


@pytest.mark.parametrize("cid", ["", ".", "..", "a/b", "../x", "a b", "é", "x" * 1025, "a\n"])
def test_invalid_ids(cid: str) -> None:
    with pytest.raises(InvalidError):
        bundle.validate_id(cid)


def test_share_tags_are_short_safe_names() -> None:
    assert bundle.validate_tag("vmrt-abc123") == "vmrt-abc123"
    for tag in ("", "..", "a/b", "x" * 37):
        with pytest.raises(InvalidError):
            bundle.validate_tag(tag)


@pytest.fixture
def share(tmp_path: Path) -> Path:
    share = tmp_path / "shares" / "c1"
    (share / "rootfs").mkdir(parents=True)
    (share / "m0").mkdir()
    (share / "up").symlink_to("/")
    (share / "inside").symlink_to("rootfs")
    (tmp_path / "bundles" / "c1").mkdir(parents=True)
    return share


def _confine(path: str, share: Path) -> str:
    return bundle.confine(path, share=str(share), bundle_dir=str(share.parent.parent / "bundles/c1"),
                          what="root.path")


def test_confine_accepts_paths_inside_the_share(share: Path) -> None:
    assert _confine(f"{share}/rootfs", share) == f"{share}/rootfs"
    assert _confine(f"{share}/inside", share) == f"{share}/rootfs"  # a symlink that stays
    assert _confine(str(share), share) == str(share)


@pytest.mark.parametrize("path", ["/etc", "{share}/../c2", "{share}/rootfs/../../..", "{share}/up",
                                  "{share}/up/etc", "rootfs", "../../shares/c1x"])
def test_confine_refuses_escapes(share: Path, path: str) -> None:
    with pytest.raises(InvalidError, match="outside the container's share"):
        _confine(path.format(share=share), share)


def test_confine_resolves_relative_paths_against_the_bundle(share: Path) -> None:
    # crun resolves a relative root.path against the bundle: that is outside the share.
    with pytest.raises(InvalidError):
        _confine("rootfs", share)
    assert _confine("../../shares/c1/rootfs", share) == f"{share}/rootfs"


def _spec(share: Path, **over: object) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "cwd": "/", "terminal": True},
        "root": {"path": f"{share}/rootfs", "readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": f"{share}/m0", "options": ["rbind"]},
            {"destination": "/etc/hosts", "source": f"{share}/m0", "options": ["bind", "ro"]},
        ],
    }
    spec.update(over)
    return spec


def test_prepare_spec_keeps_good_paths_and_applies_terminal(share: Path) -> None:
    original = _spec(share)
    out = bundle.prepare_spec(original, share=str(share), bundle_dir="/nonexistent", terminal=False)
    assert out["process"]["terminal"] is False
    assert out["root"]["path"] == f"{share}/rootfs"
    assert [m["source"] for m in out["mounts"]] == ["proc", f"{share}/m0", f"{share}/m0"]
    assert original["process"]["terminal"] is True  # the input is not modified


@pytest.mark.parametrize("mount", [
    {"destination": "/x", "type": "bind", "source": "/etc"},
    {"destination": "/x", "source": "/", "options": ["rbind"]},
    {"destination": "/x", "type": "none", "source": "{share}/up", "options": ["bind"]},
])
def test_prepare_spec_refuses_bind_sources_outside(share: Path, mount: dict[str, object]) -> None:
    mount = {k: v.format(share=share) if isinstance(v, str) else v for k, v in mount.items()}
    spec = _spec(share, mounts=[mount])
    with pytest.raises(InvalidError, match="bind mount source"):
        bundle.prepare_spec(spec, share=str(share), bundle_dir="/nonexistent", terminal=False)


@pytest.mark.parametrize("bad", [{"root": "x"}, {"root": {}}, {"mounts": {}}, {"mounts": ["x"]},
                                 {"process": None},
                                 {"mounts": [{"type": "bind", "source": 1}]},
                                 {"mounts": [{"source": "/x", "options": "bind"}]}])
def test_prepare_spec_refuses_malformed_specs(share: Path, bad: dict[str, object]) -> None:
    with pytest.raises(InvalidError):
        bundle.prepare_spec(_spec(share, **bad), share=str(share), bundle_dir="/", terminal=False)


def test_write_bundle_refuses_an_existing_bundle(tmp_path: Path) -> None:
    path = bundle.write_bundle(str(tmp_path / "bundles" / "c1"), {"a": 1})
    assert json.loads(Path(path).read_text()) == {"a": 1}
    assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        bundle.write_bundle(str(tmp_path / "bundles" / "c1"), {"a": 2})


def test_exit_status_from_wait_status() -> None:
    assert reaper.exit_status(3 << 8).to_json() == {"code": 3}
    assert reaper.exit_status(0).to_json() == {"code": 0}
    assert reaper.exit_status(9).to_json() == {"signal": 9}


def test_runtime_error_text_prefers_the_last_error(tmp_path: Path) -> None:
    log = tmp_path / "runtime.log"
    log.write_text('{"level":"warning","msg":"meh"}\n{"level":"error","msg":"no such file"}\n')
    assert containers._error_text(b"", str(log)) == "no such file"
    assert containers._error_text(b"plain failure\n\n") == "plain failure"
    assert containers._error_text(b"") == ""


def test_kernel_arg(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 vmrt.nonce=00ff vmrt.debug quiet\n")
    assert sysinit.kernel_arg("vmrt.nonce", str(cmdline)) == "00ff"
    assert sysinit.kernel_arg("vmrt.debug", str(cmdline)) is None
    assert sysinit.kernel_arg("console", str(cmdline)) == "ttyS0"


def test_port_writer_queues_on_eagain_and_keeps_frames_whole() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with ours, theirs:
            ours.setblocking(False)
            broken: list[OSError] = []
            writer = port.PortWriter(ours.fileno(), loop, broken.append)
            frames = [encode_frame(FrameType.STDOUT, 1, bytes([i]) * 60000) for i in range(40)]
            for frame in frames:
                writer.send(frame)
            assert writer.congested  # the socket buffer cannot take 2.4 MB
            drained = asyncio.Event()
            writer.on_drain(drained.set)
            received = bytearray()
            theirs.setblocking(False)
            while len(received) < sum(map(len, frames)):
                try:
                    received += theirs.recv(1 << 20)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            await asyncio.wait_for(drained.wait(), 5)
            decoded = Decoder().feed(bytes(received))
            assert [f.payload for f in decoded] == [f[11:] for f in frames]
            assert not broken

    asyncio.run(scenario())


def test_port_writer_pause_drops_partial_frame_and_responses() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with ours, theirs:
            ours.setblocking(False)
            writer = port.PortWriter(ours.fileno(), loop, lambda exc: None)
            big = encode_frame(FrameType.STDOUT, 1, b"x" * 900000)
            response = encode_frame(FrameType.RESPONSE, 0, b'{"id":1,"ok":true}')
            event = encode_frame(FrameType.EVENT, 0, b'{"event":"exit"}')
            for frame in (big, response, event):
                writer.send(frame)
            writer.pause()  # `big` was partly written: it goes, and so does the response
            theirs.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while theirs.recv(1 << 20):
                    pass
            hello = encode_frame(FrameType.EVENT, 0, b'{"event":"hello"}')
            writer.resume(hello)
            await asyncio.sleep(0.01)
            assert Decoder().feed(theirs.recv(1 << 20)) == Decoder().feed(hello + event)

    asyncio.run(scenario())



def test_virtio_port_links(tmp_path: Path) -> None:
    sys_dir, dev_dir = tmp_path / "sys", tmp_path / "dev" / "virtio-ports"
    for device, name in (("vport0p1", "vmrt.agent\n"), ("vport0p2", "../evil\n"),
                         ("vport1p1", "")):
        (sys_dir / device).mkdir(parents=True)
        (sys_dir / device / "name").write_text(name)
    (sys_dir / "vport2p1").mkdir()  # no name file
    sysinit.link_virtio_ports(str(sys_dir), str(dev_dir))
    sysinit.link_virtio_ports(str(sys_dir), str(dev_dir))  # idempotent
    assert sorted(os.listdir(dev_dir)) == ["vmrt.agent"]
    assert os.readlink(dev_dir / "vmrt.agent") == "../vport0p1"


def test_enable_controllers_writes_each_controller(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    sysinit.enable_controllers(str(tmp_path))
    # A regular file keeps only the last write; the kernel's file takes them one by one.
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+pids"


def test_loopback_up_in_a_new_network_namespace() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    code = ("import sys, fcntl, socket, struct; sys.path.insert(0, sys.argv[1]);"
            "from vmrt_agent import sysinit; sysinit.loopback_up();"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
            "r = fcntl.ioctl(s.fileno(), 0x8913, struct.pack('16sH22x', b'lo', 0));"
            "print(struct.unpack('16sH22x', r)[1] & 1)")
    proc = subprocess.run(["unshare", "--net", sys.executable, "-I", "-S", "-c", code,
                           str(AGENT_DIR)], capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, "1"), proc.stderr


def test_uevents_wake_a_waiter_when_a_device_appears() -> None:
    """The cue `shares.mount_virtiofs` waits on: a device added after subscribing is
    seen (a veth pair in a network namespace of the test's own, which gets its own
    uevents), and a wait with no device times out with False."""
    script = f"""
import asyncio, subprocess, sys
sys.path.insert(0, {str(AGENT_DIR)!r})
from vmrt_agent import uevents

async def main():
    with uevents.Uevents() as events:
        quiet = await events.wait(0.2)
        subprocess.run(["ip", "link", "add", "vmrtue0", "type", "veth", "peer", "name",
                        "vmrtue1"], check=True)
        seen = await events.wait(5.0)
    print(quiet, seen)

asyncio.run(main())
"""
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", script], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    assert out.split() == ["False", "True"]
