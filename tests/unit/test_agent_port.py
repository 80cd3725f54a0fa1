"""The guest agent end to end, over a socketpair standing in for the virtio port.

The agent runs as a child process (``python -I -S``: stdlib only, as in the
guest), a subreaper like PID 1, with runc in place of crun (crun refuses this
host's hybrid cgroups; runc takes the same arguments) and bind mounts in place
of virtio-fs.  The test speaks frames with the host's ``vmrt.protocol``.
Every container is force-deleted and every share unmounted at teardown.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmrt import protocol
from vmrt.protocol import Frame, FrameType

AGENT_DIR = Path(__file__).resolve().parents[2] / "guest-agent"
RUNC = "/usr/sbin/runc"
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "echo", "cat", "sleep", "stty", "true")
TAG = "rootfs0"
NONCE = "00c0ffee"
#: sys.argv[1] is the agent's directory; the rest are the agent's arguments.
BOOT = "import sys; sys.path.insert(0, sys.argv.pop(1)); from vmrt_agent.main import main; main()"


class AgentProc:
    """The agent in a child process, and the host's end of its port."""

    def __init__(self, work: Path, share_source: Path) -> None:
        self.work = work
        self.base = work / "agent"
        self.runc_root = work / "runc"
        self.log_path = work / "agent.log"
        self.spec_template = share_source / "config.json"
        self.sock, theirs = socket.socketpair()
        cmd = [sys.executable, "-I", "-S", "-c", BOOT, str(AGENT_DIR),
               "--port-fd", str(theirs.fileno()), "--nonce", NONCE, "--runtime", RUNC,
               "--runtime-root", str(self.runc_root), "--base-dir", str(self.base),
               "--share-source", str(share_source), "--debug"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        theirs.close()
        self.decoder = protocol.Decoder()
        self.frames: list[Frame] = []
        self._ids = itertools.count(1)
        self.container_ids: list[str] = []

    # --- the wire --------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def pump(self, timeout: float) -> None:
        """Receive whatever arrives within ``timeout`` into :attr:`frames`."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if ready:
            data = self.sock.recv(1 << 20)
            assert data, f"the agent closed its port:\n{self.log()}"
            self.frames += self.decoder.feed(data)

    def wait_until(self, cond: Callable[[], Any], timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (result := cond()):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; frames: {self.frames[-10:]}\n{self.log()}"
            self.pump(min(left, 0.2))
        return result

    def quiet_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.pump(left)

    def find(self, pred: Callable[[Frame], bool]) -> Frame | None:
        return next((f for f in self.frames if pred(f)), None)

    def call(self, op: str, timeout: float = 30.0, **args: Any) -> protocol.Response:
        req_id = next(self._ids)
        self.send(protocol.request(req_id, op, **args))
        frame = self.wait_until(lambda: self.find(
            lambda f: f.type is FrameType.RESPONSE and f.json()["id"] == req_id), timeout)
        return protocol.Response.parse(frame.json())

    def ok(self, op: str, **args: Any) -> dict[str, Any]:
        resp = self.call(op, **args)
        assert resp.ok, f"{op}: {resp.error} ({resp.kind})\n{self.log()}"
        return resp.result

    def stream(self, channel: int, ftype: FrameType) -> bytes:
        return b"".join(f.payload for f in self.frames if f.type is ftype and f.channel == channel)

    def credit(self, channel: int, amount: int = protocol.INITIAL_CREDIT) -> None:
        self.send(protocol.encode_frame(FrameType.CREDIT, channel, protocol.pack_credit(amount)))

    def exit_of(self, cid: str, timeout: float = 15.0) -> dict[str, Any]:
        frame = self.wait_until(lambda: self.find(
            lambda f: f.type is FrameType.EVENT and f.json().get("event") == "exit"
            and f.json().get("id") == cid), timeout)
        event: dict[str, Any] = frame.json()
        return event

    def index(self, pred: Callable[[Frame], bool]) -> int:
        return next(i for i, f in enumerate(self.frames) if pred(f))

    # --- containers ------------------------------------------------------------

    def share(self, cid: str) -> Path:
        return self.base / "shares" / cid

    def create(self, cid: str, channel: int, args: list[str], *, terminal: bool = False,
               edit: Callable[[dict[str, Any]], None] | None = None) -> protocol.Response:
        spec = self.spec(cid, args, terminal=terminal)
        if edit is not None:
            edit(spec)
        self.container_ids.append(cid)
        return self.call("create_container", id=cid, channel=channel, share_tag=TAG, spec=spec,
                         terminal=terminal)

    def spec(self, cid: str, args: list[str], *, terminal: bool = False) -> dict[str, Any]:
        """What `runc spec` writes, rooted in the container's share (guest paths)."""
        spec: dict[str, Any] = json.loads(self.spec_template.read_text())
        spec["root"] = {"path": f"{self.share(cid)}/rootfs", "readonly": True}
        spec["process"]["args"] = args
        spec["process"]["terminal"] = terminal
        return spec

    def runc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([RUNC, "--root", str(self.runc_root), *args], capture_output=True,
                              text=True, check=False, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        for cid in self.container_ids:
            self.runc("delete", "--force", cid)
        shares = self.base / "shares"
        for mount in sorted(shares.iterdir()) if shares.is_dir() else []:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
        self.sock.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def share_source() -> Iterator[Path]:
    """``<dir>/rootfs0/rootfs``: a busybox root, a symlink out of the share, and
    ``<dir>/config.json`` as `runc spec` writes it."""
    if os.geteuid() != 0:
        pytest.skip("the agent's container tests need root (runc, mounts)")
    for tool in (RUNC, BUSYBOX):
        if not os.access(tool, os.X_OK):
            pytest.fail(f"{tool} is missing (packages runc, busybox-static)")
    work = Path(tempfile.mkdtemp(prefix="vmrt-agent-src-"))
    rootfs = work / TAG / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (work / TAG / "escape").symlink_to("/")
    subprocess.run([RUNC, "spec", "--bundle", str(work)], check=True)
    yield work
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def agent(share_source: Path) -> Iterator[AgentProc]:
    # Short paths: console sockets live under the base dir (108-byte limit).
    work = Path(tempfile.mkdtemp(prefix="vmrt-agent-"))
    proc = AgentProc(work, share_source)
    try:
        yield proc
    finally:
        proc.close()
        print(proc.log())  # shown by pytest when the test failed
        leftovers = [c for c in proc.container_ids if c in proc.runc("list", "-q").stdout.split()]
        shutil.rmtree(work, ignore_errors=True)
        assert not leftovers


def new_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


# --- the port ------------------------------------------------------------------


def test_hello_carries_the_nonce(agent: AgentProc) -> None:
    hello = agent.wait_until(lambda: agent.find(lambda f: f.type is FrameType.EVENT))
    assert agent.frames[0] is hello
    msg = hello.json()
    assert msg["event"] == "hello"
    assert msg["version"] == protocol.VERSION
    assert msg["nonce"] == NONCE
    assert {"ping", "create_container", "kill_container"} <= set(msg["capabilities"])


def test_ping(agent: AgentProc) -> None:
    assert agent.ok("ping") == {}


def test_garbage_and_broken_frames_do_not_stop_the_agent(agent: AgentProc) -> None:
    agent.send(b"this is not a frame at all, just noise" * 3)
    assert agent.ok("ping") == {}
    agent.send(protocol.HEADER.pack(protocol.MAGIC, 0x7F, 0, 0))  # unknown frame type
    assert agent.ok("ping") == {}
    # A frame whose payload is bad, with a good request right behind it in the same write.
    agent.send(protocol.encode_frame(FrameType.CLOSE, 3, b"stdbogus") + protocol.request(99, "ping"))
    agent.wait_until(lambda: agent.find(
        lambda f: f.type is FrameType.RESPONSE and f.json()["id"] == 99))
    agent.send(protocol.encode_frame(FrameType.REQUEST, 0, b"{not json"))
    agent.send(protocol.encode_frame(FrameType.CREDIT, 77, protocol.pack_credit(5)))
    agent.send(protocol.encode_frame(FrameType.STDOUT, 0, b"wrong way"))
    assert agent.ok("ping") == {}
    assert agent.proc.poll() is None


def test_malformed_requests_are_answered_invalid(agent: AgentProc) -> None:
    agent.send(protocol.encode_json(FrameType.REQUEST, {"id": 7, "args": {}}))  # no op
    frame = agent.wait_until(lambda: agent.find(
        lambda f: f.type is FrameType.RESPONSE and f.json()["id"] == 7))
    assert frame.json()["kind"] == "invalid"
    assert agent.call("no_such_op").kind == "invalid"
    assert agent.call("create_container", id="../x", channel=1, share_tag=TAG, spec={}).kind == \
        "invalid"
    assert agent.call("create_container", id="c", channel=0, share_tag=TAG, spec={}).kind == \
        "invalid"
    assert agent.call("kill_container", id="c", signal=65).kind == "invalid"
    resp = agent.call("start_container", id="nope")
    assert (resp.ok, resp.kind, resp.error) == (False, "not_found", "container does not exist")


# --- containers ----------------------------------------------------------------


def test_stdout_and_stderr_come_back_as_separate_streams(agent: AgentProc) -> None:
    cid = new_id()
    result = agent.create(cid, 5, ["sh", "-c", "echo out; echo err >&2"])
    assert result.ok, result.error
    assert result.result["pid"] > 1
    agent.credit(5)
    agent.ok("start_container", id=cid)
    exit_event = agent.exit_of(cid)
    assert exit_event["status"] == {"code": 0}
    assert exit_event["channel"] == 5
    assert agent.stream(5, FrameType.STDOUT) == b"out\n"
    assert agent.stream(5, FrameType.STDERR) == b"err\n"
    exit_at = agent.index(lambda f: f.type is FrameType.EVENT and f.json().get("id") == cid)
    closes = [i for i, f in enumerate(agent.frames) if f.type is FrameType.CLOSE]
    assert len(closes) == 2 and max(closes) < exit_at  # no output is left behind the exit
    agent.ok("delete_container", id=cid)


def test_stdin_reaches_cat(agent: AgentProc) -> None:
    cid = new_id()
    assert agent.create(cid, 6, ["cat"]).ok
    agent.credit(6)
    agent.ok("start_container", id=cid)
    agent.send(protocol.encode_frame(FrameType.STDIN, 6, b"hello "))
    agent.send(protocol.encode_frame(FrameType.STDIN, 6, b"cat\n"))
    agent.wait_until(lambda: agent.stream(6, FrameType.STDOUT) == b"hello cat\n")
    agent.send(protocol.encode_frame(FrameType.CLOSE, 6, b"stdin"))
    assert agent.exit_of(cid)["status"] == {"code": 0}
    agent.ok("delete_container", id=cid)


def test_exit_code_is_reported_without_waiting_for_credit(agent: AgentProc) -> None:
    cid = new_id()
    assert agent.create(cid, 7, ["sh", "-c", "exit 3"]).ok
    agent.ok("start_container", id=cid)
    started = time.monotonic()
    # No output and no credit: the streams close (CLOSE needs no credit) and the
    # exit follows at once, not after the drain timeout.
    assert agent.exit_of(cid)["status"] == {"code": 3}
    assert time.monotonic() - started < 1.5
    assert {f.payload for f in agent.frames if f.type is FrameType.CLOSE} == {b"stdout", b"stderr"}
    agent.ok("delete_container", id=cid)


def test_a_failed_create_reports_the_runtime_error_and_cleans_up(agent: AgentProc) -> None:
    cid = new_id()
    resp = agent.create(cid, 16, ["/no/such/program"])
    assert (resp.ok, resp.kind) == (False, "error")
    assert "/no/such/program" in resp.error
    assert not agent.share(cid).exists()
    assert not (agent.base / "bundles" / cid).exists()
    assert cid not in agent.runc("list", "-q").stdout.split()
    assert agent.create(cid, 16, ["true"]).ok  # id and channel are free again
    agent.ok("delete_container", id=cid)


def test_kill_reports_the_signal_and_delete_cleans_up(agent: AgentProc) -> None:
    cid = new_id()
    pid = agent.create(cid, 8, ["sleep", "100"]).result["pid"]
    agent.credit(8)
    agent.ok("start_container", id=cid)
    assert agent.ok("state_container", id=cid) == {"status": "running", "pid": pid}
    agent.ok("kill_container", id=cid, signal=9, all=False)
    assert agent.exit_of(cid)["status"] == {"signal": 9}
    assert agent.ok("state_container", id=cid)["status"] == "stopped"
    assert agent.call("kill_container", id=cid, signal=15).kind == "not_running"
    share = agent.share(cid)
    assert str(share) in Path("/proc/self/mountinfo").read_text()
    agent.ok("delete_container", id=cid)
    assert cid not in agent.runc("list", "-q").stdout.split()
    assert str(share) not in Path("/proc/self/mountinfo").read_text()
    assert not share.exists()
    assert not (agent.base / "bundles" / cid).exists()
    assert agent.call("state_container", id=cid).kind == "not_found"


def test_output_waits_for_credit(agent: AgentProc) -> None:
    cid = new_id()
    assert agent.create(cid, 9, ["sh", "-c", "echo hello world"]).ok
    agent.ok("start_container", id=cid)
    agent.quiet_for(1.0)
    assert agent.stream(9, FrameType.STDOUT) == b""  # no credit, no output
    # The process has exited; its exit is reported after a bounded wait for the output.
    assert agent.exit_of(cid)["status"] == {"code": 0}
    agent.credit(9, 5)
    agent.wait_until(lambda: agent.stream(9, FrameType.STDOUT) == b"hello")
    agent.quiet_for(0.3)
    assert agent.stream(9, FrameType.STDOUT) == b"hello"  # exactly the credit
    agent.credit(9, 100)
    agent.wait_until(lambda: agent.find(lambda f: f.type is FrameType.CLOSE and f.channel == 9
                                        and f.payload == b"stdout"))
    assert agent.stream(9, FrameType.STDOUT) == b"hello world\n"
    agent.ok("delete_container", id=cid)


def test_paths_outside_the_share_are_refused(agent: AgentProc) -> None:
    cid = new_id()
    share = agent.share(cid)

    def root(path: str) -> Callable[[dict[str, Any]], None]:
        return lambda spec: spec.update(root={"path": path})

    def bind(source: str) -> Callable[[dict[str, Any]], None]:
        return lambda spec: spec["mounts"].append(
            {"destination": "/mnt", "type": "bind", "source": source, "options": ["rbind"]})

    for edit in (root("/"), root(f"{share}/../../.."), root(f"{share}/escape"),
                 root(f"{share}/escape/etc"), root("rootfs"), bind("/etc"),
                 bind(f"{share}/escape")):
        resp = agent.create(cid, 10, ["true"], edit=edit)
        assert (resp.ok, resp.kind) == (False, "invalid"), resp
        assert "outside the container's share" in resp.error
        assert not share.exists()  # unmounted and removed again
        assert not (agent.base / "bundles" / cid).exists()
    assert cid not in agent.runc("list", "-q").stdout.split()
    # The id and the channel are free again.
    assert agent.create(cid, 10, ["true"], edit=bind(f"{share}/rootfs/bin")).ok
    agent.ok("delete_container", id=cid, force=True)


def test_terminal_output_and_resize(agent: AgentProc) -> None:
    cid = new_id()
    resp = agent.create(cid, 11, ["sh", "-c", "stty size; echo to-stderr >&2"], terminal=True)
    assert resp.ok, resp.error
    agent.send(protocol.encode_frame(FrameType.RESIZE, 11, protocol.pack_resize(30, 100)))
    agent.credit(11)
    agent.ok("start_container", id=cid)
    assert agent.exit_of(cid)["status"] == {"code": 0}
    out = agent.stream(11, FrameType.STDOUT)
    assert b"30 100" in out
    assert b"to-stderr" in out  # a terminal has one stream
    assert agent.stream(11, FrameType.STDERR) == b""
    agent.ok("delete_container", id=cid)


def test_duplicate_ids_and_channels_are_refused(agent: AgentProc) -> None:
    cid = new_id()
    assert agent.create(cid, 12, ["sleep", "100"]).ok
    assert agent.create(cid, 13, ["true"]).kind == "invalid"
    assert agent.create(new_id(), 12, ["true"]).kind == "invalid"
    resp = agent.call("delete_container", id=cid)  # created, not started: runc deletes it
    assert resp.ok, resp.error
    assert agent.exit_of(cid)["status"] == {"signal": 9}


def test_requests_run_concurrently(agent: AgentProc) -> None:
    cid = new_id()
    assert agent.create(cid, 14, ["cat"]).ok
    agent.ok("start_container", id=cid)
    # A ping and a kill sent right behind a create (which runs runc) are answered
    # before it: each request is a task of its own.
    other = new_id()
    agent.container_ids.append(other)
    agent.send(protocol.request(1000, "create_container", id=other, channel=15, share_tag=TAG,
                                spec=agent.spec(other, ["true"]), terminal=False)
               + protocol.request(1001, "ping"))
    responses = agent.wait_until(lambda: [f.json()["id"] for f in agent.frames
                                          if f.type is FrameType.RESPONSE
                                          and f.json()["id"] >= 1000] or None)
    assert responses[0] == 1001
    agent.ok("kill_container", id=cid, signal=9, all=True)
    agent.exit_of(cid)
    agent.wait_until(lambda: agent.find(
        lambda f: f.type is FrameType.RESPONSE and f.json()["id"] == 1000))
    for c in (cid, other):
        agent.ok("delete_container", id=c, force=True)


def test_stdin_nobody_reads_is_dropped_not_buffered_forever(agent: AgentProc) -> None:
    cid = new_id()
    assert agent.create(cid, 17, ["sleep", "100"]).ok
    agent.ok("start_container", id=cid)
    chunk = protocol.encode_frame(FrameType.STDIN, 17, b"x" * 65536)
    for _ in range(20):  # 1.25 MiB: the pipe takes 64 KiB, the agent holds at most 1 MiB
        agent.send(chunk)
    assert agent.ok("ping") == {}
    agent.wait_until(lambda: "dropping its input" in agent.log())
    agent.ok("kill_container", id=cid, signal=9)
    assert agent.exit_of(cid)["status"] == {"signal": 9}
    agent.ok("delete_container", id=cid)


def test_the_agent_exits_when_the_host_closes_the_port(agent: AgentProc) -> None:
    agent.ok("ping")
    agent.sock.shutdown(socket.SHUT_RDWR)
    assert agent.proc.wait(timeout=10) == 0
