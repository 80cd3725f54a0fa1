"""One container process as the monitor sees it: its channel, its reader, its exit.

Output flows agent → monitor → shim under credit: the monitor grants the
agent more output only after the shim's socket took the previous bytes, so
a shim that stops reading stalls its own container and nothing else. The
guest is not trusted to keep to its credit: output beyond what was granted
breaks the protocol (the link is dropped), or a guest could make the monitor
buffer without bound for a shim that does not read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from vmrt import protocol
from vmrt.errors import SandboxError
from vmrt.protocol import ExitStatus, Frame, FrameType

#: The most input held for a process before the shim is made to wait.
STDIN_CHUNK = 64 << 10


@dataclass
class ProcessChannel:
    container_id: str
    channel: int
    send_to_agent: Callable[[bytes], None]
    reader: asyncio.StreamWriter | None = None
    exit_status: ExitStatus | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    #: Output the agent may still send (granted, not yet received).
    _credit: int = 0
    #: Output received and relayed, to be granted again once the shim took it.
    _to_grant: int = 0
    _granting: asyncio.Task[None] | None = None
    #: Input the agent can take (it grants it as the process reads), what waits for
    #: more, and whether the shim's EOF waits behind it.
    _stdin_credit: int = 0
    _stdin_buf: bytearray = field(default_factory=bytearray)
    _stdin_close: bool = False
    #: Set while the session may read more from the shim: input backs up to the shim's
    #: socket (and so to its writer), never into the monitor's memory.
    stdin_room: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.stdin_room.set()

    def attach(self, writer: asyncio.StreamWriter) -> None:
        self.reader = writer
        if self.exit_status is not None:
            self._send_exit()
            return
        self._grant(protocol.INITIAL_CREDIT)

    def detach(self) -> None:
        self.reader = None

    def from_agent(self, frame: Frame) -> None:
        """STDOUT/STDERR/CLOSE from the guest, relayed to the attached shim."""
        if frame.type is FrameType.CREDIT:
            self._stdin_credit += protocol.unpack_credit(frame.payload)
            self._pump_stdin()
            return
        size = len(frame.payload) if frame.type in (FrameType.STDOUT, FrameType.STDERR) else 0
        if size > self._credit:
            raise protocol.ProtocolError(
                f"the guest sent {size} bytes on channel {self.channel} with credit for "
                f"{self._credit}")
        self._credit -= size
        if self.reader is None or self.reader.is_closing():
            return
        self.reader.write(frame.encode())
        if size:
            # One grant per drain, not one task per frame: a guest sending 1-byte frames
            # must not make the monitor hold a task for each.
            self._to_grant += size
            if self._granting is None:
                self._granting = asyncio.create_task(self._grant_after_drain())

    async def _grant_after_drain(self) -> None:
        try:
            with contextlib.suppress(ConnectionError, OSError, SandboxError):
                while self._to_grant and (writer := self.reader) is not None:
                    await writer.drain()
                    amount, self._to_grant = self._to_grant, 0
                    self._grant(amount)
        finally:
            self._granting = None

    def _grant(self, amount: int) -> None:
        self._credit += amount
        self.send_to_agent(protocol.encode_frame(
            FrameType.CREDIT, self.channel, protocol.pack_credit(amount)))

    def from_shim(self, frame: Frame) -> None:
        """STDIN/CLOSE/RESIZE from the shim, relayed to the guest."""
        if frame.type not in (FrameType.STDIN, FrameType.CLOSE, FrameType.RESIZE):
            raise protocol.ProtocolError(f"a shim may not send {frame.type.name}")
        if frame.type is FrameType.CLOSE and frame.payload != b"stdin":
            raise protocol.ProtocolError("a shim may only close stdin")
        if frame.type is FrameType.STDIN:
            self._stdin_buf += frame.payload
        elif frame.type is FrameType.CLOSE:
            self._stdin_close = True
        else:
            self.send_to_agent(protocol.encode_frame(frame.type, self.channel, frame.payload))
        self._pump_stdin()

    def _pump_stdin(self) -> None:
        while self._stdin_buf and self._stdin_credit > 0 and self.exit_status is None:
            size = min(self._stdin_credit, len(self._stdin_buf), STDIN_CHUNK)
            self.send_to_agent(protocol.encode_frame(FrameType.STDIN, self.channel,
                                                     bytes(self._stdin_buf[:size])))
            del self._stdin_buf[:size]
            self._stdin_credit -= size
        if self._stdin_close and not self._stdin_buf and self.exit_status is None:
            self._stdin_close = False
            self.send_to_agent(protocol.encode_frame(FrameType.CLOSE, self.channel, b"stdin"))
        if len(self._stdin_buf) < STDIN_CHUNK:
            self.stdin_room.set()
        else:
            self.stdin_room.clear()

    def exit(self, status: ExitStatus) -> None:
        if self.exit_status is not None:
            return
        self.exit_status = status
        self.exited.set()
        self._stdin_buf.clear()  # nobody will read it now
        self.stdin_room.set()
        self._send_exit()

    def _send_exit(self) -> None:
        if self.reader is not None and not self.reader.is_closing() and self.exit_status:
            self.reader.write(protocol.event(
                "exit", id=self.container_id, channel=self.channel,
                status=self.exit_status.to_json()))
