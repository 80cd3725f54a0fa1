"""What the CLI uses to reach a sandbox monitor: one request, one answer, bounded."""

from __future__ import annotations

import itertools
import socket
import time
from pathlib import Path
from typing import Any

from vmrt import protocol
from vmrt.errors import MonitorError
from vmrt.protocol import FrameType
from vmrt.util.sockets import connect_unix


class MonitorClient:
    def __init__(self, sock_path: Path, *, timeout: float = 60.0) -> None:
        self.timeout = timeout
        try:
            self.sock: socket.socket = connect_unix(sock_path, timeout=min(timeout, 5.0))
        except OSError as exc:
            raise MonitorError(f"the pod VM's monitor is not reachable: {exc.strerror or exc}",
                               "unreachable") from exc
        self.sock.settimeout(timeout)
        self._ids = itertools.count(1)
        self._decoder = protocol.Decoder()
        self._frames: list[protocol.Frame] = []

    def __enter__(self) -> MonitorClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        req_id = next(self._ids)
        try:
            self.sock.sendall(protocol.request(req_id, op, **args))
            deadline = time.monotonic() + self.timeout
            while True:
                frame = self._next_frame(deadline)
                if frame.type is FrameType.RESPONSE:
                    resp = protocol.Response.parse(frame.json())
                    if resp.id == req_id:
                        break
        except (OSError, protocol.ProtocolError) as exc:
            raise MonitorError(f"lost the pod VM's monitor during {op}: {exc}",
                               "unreachable") from exc
        if not resp.ok:
            raise MonitorError(resp.error, resp.kind)
        return resp.result

    def _next_frame(self, deadline: float) -> protocol.Frame:
        # The deadline holds even for a peer that never stops sending other frames.
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        while not self._frames:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise protocol.ProtocolError("the monitor closed the connection")
            self._frames.extend(self._decoder.feed(data))
        return self._frames.pop(0)
