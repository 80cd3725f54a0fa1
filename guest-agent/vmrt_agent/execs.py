"""Extra processes in a running container: `crun exec`, streamed on a channel of their own.

An exec'd process is treated like a container's init: its stdio are pipes
(or a pty crun sends back), its exit is reaped by the one reaper (crun exec
--detach leaves it to us, the subreaper), and its exit event follows its
output. Signals for any process, init or exec'd, arrive by channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from vmrt_agent import bundle, console, protocol
from vmrt_agent.containers import CONSOLE_TIMEOUT, Containers, _discard_pty, _read_pid
from vmrt_agent.errors import InvalidError, NotFoundError
from vmrt_agent.io import ProcessIO
from vmrt_agent.reaper import exit_status

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ExecRequest:
    id: str
    exec_id: str
    channel: int
    process: dict[str, Any]
    terminal: bool


class Execs:
    def __init__(self, containers: Containers) -> None:
        self._containers = containers
        self._pids: dict[int, int] = {}  # channel -> pid of a live exec'd process
        self._watchers: set[asyncio.Task[None]] = set()

    def exec(self, req: ExecRequest) -> Coroutine[Any, Any, int]:
        """Reserve the channel now (frames for it may follow at once); start it later."""
        c = self._containers
        bundle.validate_id(req.id)
        bundle.validate_id(req.exec_id)
        args = req.process.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            raise InvalidError("process.args must be a non-empty list of strings")
        if req.channel in c._channels:
            raise InvalidError(f"channel {req.channel} is already in use")
        pio = ProcessIO(req.channel, c._writer, terminal=req.terminal)
        child_fds = [] if req.terminal else _pipes(pio)
        c._channels.add(pio)
        return self._exec(req, pio, child_fds)

    async def _exec(self, req: ExecRequest, pio: ProcessIO, child_fds: list[int]) -> int:
        c = self._containers
        exec_dir = os.path.join(c._config.bundle_dir(req.id), "execs", req.exec_id)
        try:
            await c._ready(req.id)
            os.makedirs(exec_dir, mode=0o700)
            process = {**req.process, "terminal": req.terminal}
            process_file = os.path.join(exec_dir, "process.json")
            with open(process_file, "w") as f:
                json.dump(process, f)
            pid_file = os.path.join(exec_dir, "pid")
            log_file = os.path.join(exec_dir, "runtime.log")
            argv = ["exec", "--process", process_file, "--detach", "--pid-file", pid_file]
            if req.terminal:
                await self._exec_tty(req, pio, argv, log_file)
            else:
                stdin, stdout, stderr = child_fds
                result = await c._call(*argv, req.id, log_file=log_file, stdin=stdin,
                                       stdout=stdout, stderr=stderr)
                c._check("exec", result, log_file)
            pid = _read_pid(pid_file)
            exited = c._reaper.adopt(pid)
        except BaseException:
            c._channels.remove(req.channel)
            pio.close()
            shutil.rmtree(exec_dir, ignore_errors=True)
            raise
        finally:
            for fd in child_fds:
                os.close(fd)
        self._pids[req.channel] = pid
        task = asyncio.create_task(self._watch(req, pio, pid, exited, exec_dir))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return pid

    async def _exec_tty(self, req: ExecRequest, pio: ProcessIO, argv: list[str],
                        log_file: str) -> None:
        c = self._containers
        socket_path = c._config.console_socket(req.channel)
        with contextlib.closing(console.listen(socket_path)) as listener:
            receiving = asyncio.ensure_future(console.receive_pty(listener))
            try:
                result = await c._call(*argv, "--console-socket", socket_path, req.id,
                                       log_file=log_file)
                c._check("exec", result, log_file)
                async with asyncio.timeout(CONSOLE_TIMEOUT):
                    master = await receiving
            except BaseException:
                _discard_pty(receiving)
                raise
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(socket_path)
        pio.attach_pty(master)

    async def _watch(self, req: ExecRequest, pio: ProcessIO, pid: int,
                     exited: asyncio.Future[int], exec_dir: str) -> None:
        c = self._containers
        status = exit_status(await exited)
        self._pids.pop(req.channel, None)
        pio.notice_exit()
        await pio.wait_outputs_closed(c._config.exit_drain_timeout)
        c._writer.send(protocol.event("exit", id=req.id, exec_id=req.exec_id,
                                      channel=req.channel, status=status.to_json()))
        c._channels.remove(req.channel)
        pio.close()
        shutil.rmtree(exec_dir, ignore_errors=True)
        log.info("exec %s in %s (pid %d) exited: %s", req.exec_id, req.id, pid,
                 status.to_json())

    def signal(self, channel: int, sig: int) -> None:
        """Signal an exec'd process by its channel."""
        pid = self._pids.get(channel)
        if pid is None:
            raise NotFoundError("no such process")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.Signals(sig) if sig else 0)


def _pipes(pio: ProcessIO) -> list[int]:
    """Make the process's stdin/stdout/stderr pipes; return the child's ends."""
    with contextlib.ExitStack() as undo:
        ends = []
        for _ in range(3):
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            undo.callback(os.close, read_end)
            undo.callback(os.close, write_end)
            ends.append((read_end, write_end))
        (stdin_r, stdin_w), (stdout_r, stdout_w), (stderr_r, stderr_w) = ends
        for fd in (stdin_w, stdout_r, stderr_r):
            os.set_blocking(fd, False)
        pio.attach_pipes(stdin_w, stdout_r, stderr_r)
        undo.pop_all()
    return [stdin_r, stdout_w, stderr_w]
