"""One container process as the monitor sees it: its channel, its reader, its exit.

Output flows agent → monitor → shim under credit: the monitor grants the
agent more output only after the shim's socket took the previous bytes, so
a shim that stops reading stalls its own container and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from vmrt import protocol
from vmrt.protocol import ExitStatus, Frame, FrameType


@dataclass
class ProcessChannel:
    container_id: str
    channel: int
    send_to_agent: Callable[[bytes], None]
    reader: asyncio.StreamWriter | None = None
    exit_status: ExitStatus | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    _drains: set[asyncio.Task[None]] = field(default_factory=set)

    def attach(self, writer: asyncio.StreamWriter) -> None:
        self.reader = writer
        if self.exit_status is not None:
            self._send_exit()
            return
        self.send_to_agent(protocol.encode_frame(
            FrameType.CREDIT, self.channel, protocol.pack_credit(protocol.INITIAL_CREDIT)))

    def detach(self) -> None:
        self.reader = None

    def from_agent(self, frame: Frame) -> None:
        """STDOUT/STDERR/CLOSE from the guest, relayed to the attached shim."""
        if self.reader is None or self.reader.is_closing():
            return
        self.reader.write(frame.encode())
        if frame.type in (FrameType.STDOUT, FrameType.STDERR) and frame.payload:
            task = asyncio.create_task(self._credit_after_drain(len(frame.payload)))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)

    async def _credit_after_drain(self, amount: int) -> None:
        writer = self.reader
        if writer is None:
            return
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()
            self.send_to_agent(protocol.encode_frame(
                FrameType.CREDIT, self.channel, protocol.pack_credit(amount)))

    def from_shim(self, frame: Frame) -> None:
        """STDIN/CLOSE/RESIZE from the shim, relayed to the guest."""
        if frame.type not in (FrameType.STDIN, FrameType.CLOSE, FrameType.RESIZE):
            raise protocol.ProtocolError(f"a shim may not send {frame.type.name}")
        if frame.type is FrameType.CLOSE and frame.payload != b"stdin":
            raise protocol.ProtocolError("a shim may only close stdin")
        self.send_to_agent(protocol.encode_frame(frame.type, self.channel, frame.payload))

    def exit(self, status: ExitStatus) -> None:
        if self.exit_status is not None:
            return
        self.exit_status = status
        self.exited.set()
        self._send_exit()

    def _send_exit(self) -> None:
        if self.reader is not None and not self.reader.is_closing() and self.exit_status:
            self.reader.write(protocol.event(
                "exit", id=self.container_id, channel=self.channel,
                status=self.exit_status.to_json()))
