"""The container shim: the host process that *is* the container for its caller.

`vmrt create` forks it and writes its pid to --pid-file. conmon and
containerd's shim are subreapers, so once `create` exits they adopt it and
`waitpid` on it exactly as on runc's container process. It therefore:

* holds the container's stdio (the fds `create` inherited, or a host pty
  whose master went to --console-socket) and relays them to the guest
  process through the monitor;
* forwards the signals it receives to the guest process;
* exits with the guest process's status, re-raising a fatal signal on
  itself so that `waitpid` reports "killed by N" (conmon: 128 + N).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import socket
import struct
import termios
import tty
from pathlib import Path
from typing import Any

from vmrt import protocol
from vmrt.protocol import ExitStatus, FrameType
from vmrt.util.proc import close_fds_except
from vmrt.util.record import record
from vmrt.util.sockets import connect_unix

#: Signals relayed to the container, as runc relays them (not SIGCHLD, SIGURG, SIGWINCH).
FORWARDED = tuple(
    s for s in signal.Signals
    if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGURG, signal.SIGWINCH,
                 signal.SIGPIPE, signal.SIGTTIN, signal.SIGTTOU, signal.SIGTSTP)
)
EXIT_MONITOR_LOST = 255


@record
class ShimSpec:
    container_id: str
    channel: int
    monitor_sock: Path
    #: With a terminal: the pty's slave (host side); else None and fds 0/1/2 are used.
    tty_fd: int | None = None
    #: The pod's network namespace (a path), which the shim joins: it stands for the
    #: container, and ocid runs CNI on /proc/<pid from --pid-file>/ns/net.
    netns: str | None = None
    #: Run in the caller's process (`exec` without --detach, CRI-O's streaming exec):
    #: no new session, the caller's own terminal if `local_tty`, and the status is
    #: returned as a shell would report it instead of being re-raised.
    foreground: bool = False
    local_tty: bool = False


def spawn(spec: ShimSpec) -> int:
    """Fork the shim; return its pid once it is attached to the container's channel."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the shim itself
        code = EXIT_MONITOR_LOST
        try:
            os.close(rfd)
            if spec.netns is not None:
                _join_netns(spec.netns)
            keep = {0, 1, 2, wfd} | ({spec.tty_fd} if spec.tty_fd is not None else set())
            close_fds_except(keep)
            code = Shim(spec).run(wfd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(wfd, f"shim failed: {exc}\n".encode())
            _log_failure(spec, exc)
        os._exit(code)
    os.close(wfd)
    try:
        with os.fdopen(rfd, "rb") as ready:
            line = ready.readline().decode(errors="replace").strip()
    except OSError as exc:
        line = f"shim failed: {exc}"
    if line != "ok":
        with contextlib.suppress(ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise OSError(line or "the shim exited before attaching")
    return pid


class Shim:
    def __init__(self, spec: ShimSpec) -> None:
        self.spec = spec
        self.sock: socket.socket | None = None
        self.sel = selectors.DefaultSelector()
        self.decoder = protocol.Decoder()
        self.in_fd = spec.tty_fd if spec.tty_fd is not None else 0
        self.out_fds = {FrameType.STDOUT: 1, FrameType.STDERR: 2}
        self.req_ids = iter(range(1_000_000, 2**40))
        self._pending: list[protocol.Frame] = []
        self.tty_fd = spec.tty_fd  # where window sizes are read
        self.saved_tty: list[Any] | None = None

    def run(self, ready_fd: int) -> int:
        if not self.spec.foreground:
            os.setsid()  # our caller's terminal signals must reach us only through `kill`
            # A forked shim keeps its creator's argv; its name is how `vmrt gc` tells it apart.
            with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
                comm.write("vmrt-shim")
        if self.spec.tty_fd is not None:
            self._take_terminal(self.spec.tty_fd)
        elif self.spec.local_tty:
            self._use_local_terminal()
        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(sig_w, warn_on_full_buffer=False)
        for s in (*FORWARDED, signal.SIGWINCH):
            signal.signal(s, lambda *_: None)
        self.sock = connect_unix(self.spec.monitor_sock, timeout=10)
        self.sock.sendall(protocol.request(1, "attach", channel=self.spec.channel))
        if not self._await_attach():
            os.write(ready_fd, b"attach refused\n")
            return EXIT_MONITOR_LOST
        os.write(ready_fd, b"ok\n")
        os.close(ready_fd)
        self.sock.setblocking(True)
        self.sock.settimeout(None)
        self._send_winsize()
        self.sel.register(self.sock, selectors.EVENT_READ, "monitor")
        self.sel.register(sig_r, selectors.EVENT_READ, "signal")
        try:
            self.sel.register(self.in_fd, selectors.EVENT_READ, "stdin")
        except PermissionError:
            # A regular file or /dev/null (conmon's stdin without -i) cannot be polled,
            # and is always readable: pass it on now, EOF included, as a pipe would be.
            self._drain_unpollable_stdin()
        except (ValueError, OSError):
            pass  # no stdin at all
        status = self._loop(sig_r)
        return self._exit(status)

    def _take_terminal(self, fd: int) -> None:
        # The slave becomes our controlling terminal, so a resize on the master
        # (conmon's ctl fifo, CRI-O's TIOCSWINSZ) raises SIGWINCH here. Raw mode: the
        # guest's pty does echo, line editing and ^C; a second discipline would double them.
        fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
        tty.setraw(fd)
        null = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(null, std)
        os.close(null)
        self.out_fds = {FrameType.STDOUT: fd, FrameType.STDERR: fd}

    def _use_local_terminal(self) -> None:
        """Foreground with -t: our own terminal is the process's; raw while it runs."""
        self.tty_fd = 0
        if os.isatty(0):
            self.saved_tty = termios.tcgetattr(0)
            tty.setraw(0)
        self.out_fds = {FrameType.STDOUT: 1, FrameType.STDERR: 1}

    def _await_attach(self) -> bool:
        assert self.sock is not None
        while True:
            data = self.sock.recv(65536)
            if not data:
                return False
            for frame in self.decoder.feed(data):
                if frame.type is FrameType.RESPONSE:
                    return protocol.Response.parse(frame.json()).ok
                self._pending.append(frame)

    def _loop(self, sig_r: int) -> ExitStatus | None:
        assert self.sock is not None
        for frame in self._pending:
            if (status := self._on_frame(frame)) is not None:
                return status
        while True:
            for key, _ in self.sel.select():
                if key.data == "monitor":
                    try:
                        data = self.sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        return None
                    try:
                        frames = self.decoder.feed(data)
                    except protocol.ProtocolError:
                        return None
                    for frame in frames:
                        if (status := self._on_frame(frame)) is not None:
                            return status
                elif key.data == "signal":
                    self._on_signals(os.read(sig_r, 256))
                elif key.data == "stdin":
                    self._on_stdin()

    def _on_frame(self, frame: protocol.Frame) -> ExitStatus | None:
        if frame.type in (FrameType.STDOUT, FrameType.STDERR):
            with contextlib.suppress(OSError):
                _write_all(self.out_fds[frame.type], frame.payload)
        elif frame.type is FrameType.CLOSE and self.tty_fd is None:
            fd = 1 if frame.payload == b"stdout" else 2 if frame.payload == b"stderr" else -1
            if fd > 0:
                # EOF for our reader, as when runc's container closes its stdout.
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)
        elif frame.type is FrameType.EVENT:
            msg = frame.json()
            if msg.get("event") == "exit":
                return ExitStatus.parse(msg.get("status"))
        return None

    def _on_signals(self, sigs: bytes) -> None:
        assert self.sock is not None
        for s in sigs:
            if s == signal.SIGWINCH:
                self._send_winsize()
            else:
                self.sock.sendall(protocol.request(next(self.req_ids), "signal_process",
                                                   channel=self.spec.channel, signal=s))

    def _drain_unpollable_stdin(self) -> None:
        assert self.sock is not None
        while data := os.read(self.in_fd, 65536):
            self.sock.sendall(protocol.encode_frame(FrameType.STDIN, 0, data))
        if self.tty_fd is None:
            self.sock.sendall(protocol.encode_frame(FrameType.CLOSE, 0, b"stdin"))

    def _on_stdin(self) -> None:
        assert self.sock is not None
        try:
            data = os.read(self.in_fd, 65536)
        except OSError:
            data = b""
        if data:
            self.sock.sendall(protocol.encode_frame(FrameType.STDIN, 0, data))
            return
        self.sel.unregister(self.in_fd)
        if self.tty_fd is None:
            self.sock.sendall(protocol.encode_frame(FrameType.CLOSE, 0, b"stdin"))

    def _send_winsize(self) -> None:
        if self.tty_fd is None or self.sock is None:
            return
        with contextlib.suppress(OSError):
            rows, cols, _, _ = struct.unpack(
                "HHHH", fcntl.ioctl(self.tty_fd, termios.TIOCGWINSZ, b"\0" * 8))
            if rows and cols:
                self.sock.sendall(protocol.encode_frame(
                    FrameType.RESIZE, 0, protocol.pack_resize(rows, cols)))

    def _exit(self, status: ExitStatus | None) -> int:
        if self.saved_tty is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, self.saved_tty)
        if status is None:
            return EXIT_MONITOR_LOST
        if self.spec.foreground:
            return status.wait_code
        if status.signal is None:
            return status.code or 0
        # Die of the same signal, so our waiter sees WIFSIGNALED exactly as with runc.
        signal.set_wakeup_fd(-1)
        if status.signal not in (signal.SIGKILL, signal.SIGSTOP):  # those have no handler
            signal.signal(status.signal, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [status.signal])
        os.kill(os.getpid(), status.signal)
        return status.wait_code  # the signal is one whose default is to be ignored


def _join_netns(path: str) -> None:
    from vmrt.network.netns import setns

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
    finally:
        os.close(fd)


def run_foreground(spec: ShimSpec) -> int:
    """Be the shim in this process; return the exit code a shell would show."""
    shim = Shim(spec)
    rfd, wfd = os.pipe()
    try:
        return shim.run(wfd)
    finally:
        os.close(rfd)
        with contextlib.suppress(OSError):
            os.close(wfd)


def _log_failure(spec: ShimSpec, exc: BaseException) -> None:
    """The shim's stdio belongs to the container; its own failures go beside the monitor's log."""
    import traceback

    with contextlib.suppress(OSError), open(spec.monitor_sock.with_name("shim.log"), "a") as f:
        f.write(f"shim of {spec.container_id} failed:\n")
        traceback.print_exception(exc, file=f)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
