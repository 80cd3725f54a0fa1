"""The crun driver: containers in the guest, one runtime call per verb.

The agent leaves container mechanics (namespaces, mounts, seccomp, users) to
crun and does only what crun cannot: mount the share the host hot-plugged,
check and write the bundle, give the process its stdio, and report its exit.
Every acquisition registers its undo where it happens, in the container's
``cleanup`` stack, so a failed ``create`` and a ``delete`` release the same
things in the same (reverse) order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from vmrt_agent import bundle, console, protocol
from vmrt_agent.config import AgentConfig
from vmrt_agent.errors import (
    CONTAINER_EXISTS,
    AgentError,
    InvalidError,
    NotFoundError,
    NotRunningError,
)
from vmrt_agent.io import Channels, ProcessIO
from vmrt_agent.port import PortWriter
from vmrt_agent.reaper import Completed, Reaper, exit_status

log = logging.getLogger(__name__)

#: How long crun gets to hand over the pty master after ``create`` returned.
CONSOLE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class CreateRequest:
    id: str
    channel: int
    share_tag: str
    spec: dict[str, Any]
    terminal: bool
    no_new_keyring: bool = False


@dataclass(frozen=True, slots=True)
class KillRequest:
    id: str
    signal: int
    all: bool


@dataclass(eq=False)
class Container:
    id: str
    channel: int
    io: ProcessIO
    cleanup: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    #: Set once ``create`` finished, either way; other verbs wait for it.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pid: int = 0
    watcher: asyncio.Task[None] | None = None


class Containers:
    """The containers of this guest, by id."""

    def __init__(self, config: AgentConfig, reaper: Reaper, channels: Channels,
                 writer: PortWriter) -> None:
        self._config = config
        self._reaper = reaper
        self._channels = channels
        self._writer = writer
        self._by_id: dict[str, Container] = {}

    # --- create ------------------------------------------------------------

    def create(self, req: CreateRequest) -> Coroutine[Any, Any, int]:
        """Reserve the id and channel now; return the coroutine that does the rest.

        The reservation is synchronous on purpose: the host may send CREDIT,
        STDIN or RESIZE for the channel right behind the request, and those
        frames are routed before any task gets to run.
        """
        bundle.validate_id(req.id)
        bundle.validate_tag(req.share_tag)
        if req.id in self._by_id:
            raise InvalidError(CONTAINER_EXISTS)
        if req.channel in self._channels:
            raise InvalidError(f"channel {req.channel} is already in use")
        pio = ProcessIO(req.channel, self._writer, terminal=req.terminal)
        child_fds: list[int] = []
        if not req.terminal:
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
                child_fds = [stdin_r, stdout_w, stderr_w]
                undo.pop_all()
        container = Container(req.id, req.channel, pio)
        self._by_id[req.id] = container
        self._channels.add(pio)
        container.cleanup.callback(self._forget, container)
        container.cleanup.callback(pio.close)
        return self._create(container, req, child_fds)

    def _forget(self, container: Container) -> None:
        self._by_id.pop(container.id, None)
        self._channels.remove(container.channel)

    async def _create(self, container: Container, req: CreateRequest,
                      child_fds: list[int]) -> int:
        cleanup = container.cleanup
        try:
            async with contextlib.AsyncExitStack() as undo_create:
                for fd in child_fds:  # the agent's copies go once crun has its own
                    undo_create.callback(os.close, fd)
                share = self._config.share_dir(req.id)
                cleanup.callback(self._config.unmount_share, share)
                await self._config.mount_share(req.share_tag, share)
                bundle_dir = self._config.bundle_dir(req.id)
                spec = bundle.prepare_spec(req.spec, share=share, bundle_dir=bundle_dir,
                                           terminal=req.terminal)
                shutil.rmtree(bundle_dir, ignore_errors=True)  # left by an earlier failure
                cleanup.callback(shutil.rmtree, bundle_dir, ignore_errors=True)
                bundle.write_bundle(bundle_dir, spec)
                pid = await self._runtime_create(container, req, bundle_dir, child_fds,
                                                 undo_create)
                exited = self._reaper.adopt(pid)
        except BaseException:
            await cleanup.aclose()
            raise
        finally:
            container.ready.set()
        container.pid = pid
        container.watcher = asyncio.create_task(self._watch(container, exited))
        return pid

    async def _runtime_create(self, container: Container, req: CreateRequest, bundle_dir: str,
                              child_fds: list[int], undo: contextlib.AsyncExitStack) -> int:
        pid_file = os.path.join(bundle_dir, "pid")
        log_file = os.path.join(bundle_dir, "runtime.log")
        args = ["create", "--bundle", bundle_dir, "--pid-file", pid_file]
        if self._config.no_pivot:
            args.append("--no-pivot")
        # A session keyring is named after the container; names starting with "." are
        # reserved by the kernel, so such a container shares the agent's keyring.
        if req.no_new_keyring or req.id.startswith("."):
            args.append("--no-new-keyring")
        # Whatever create left behind goes if anything below fails.
        undo.push_async_callback(self._force_delete, req.id)
        if req.terminal:
            socket_path = self._config.console_socket(req.channel)
            with contextlib.closing(console.listen(socket_path)) as listener:
                receiving = asyncio.ensure_future(console.receive_pty(listener))
                try:
                    result = await self._call(*args, "--console-socket", socket_path, req.id,
                                              log_file=log_file)
                    self._check("create", result, log_file)
                    async with asyncio.timeout(CONSOLE_TIMEOUT):
                        master = await receiving
                except BaseException:
                    _discard_pty(receiving)
                    raise
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(socket_path)
            container.io.attach_pty(master)
        else:
            # crun's stdio becomes the container's: the pipes made in create().
            stdin, stdout, stderr = child_fds
            result = await self._call(*args, req.id, log_file=log_file, stdin=stdin,
                                      stdout=stdout, stderr=stderr)
            self._check("create", result, log_file)
        pid = _read_pid(pid_file)
        undo.pop_all()
        for fd in child_fds:
            os.close(fd)
        return pid

    async def _force_delete(self, container_id: str) -> None:
        result = await self._call("delete", "--force", container_id)
        if result.returncode != 0:
            log.debug("rollback delete of %s: %s", container_id, _error_text(result.stderr))

    async def _watch(self, container: Container, exited: asyncio.Future[int]) -> None:
        """Report the exit, after the output that precedes it (bounded wait)."""
        status = exit_status(await exited)
        log.info("container %s (pid %d) exited: %s", container.id, container.pid,
                 status.to_json())
        container.io.notice_exit()
        if not await container.io.wait_outputs_closed(self._config.exit_drain_timeout):
            log.info("container %s: reporting exit before its output was read", container.id)
        self._writer.send(protocol.event("exit", id=container.id, channel=container.channel,
                                         status=status.to_json()))

    # --- the other verbs ---------------------------------------------------

    async def start(self, container_id: str) -> None:
        container = await self._ready(container_id)
        async with container.lock:
            self._check("start", await self._call("start", container_id))

    async def kill(self, req: KillRequest) -> None:
        container = await self._ready(req.id)
        async with container.lock:
            flags = ["--all"] if req.all else []
            self._check("kill", await self._call("kill", *flags, req.id, str(req.signal)))

    async def state(self, container_id: str) -> dict[str, Any]:
        container = await self._ready(container_id)
        async with container.lock:
            result = await self._call("state", container_id)
        self._check("state", result)
        try:
            state = json.loads(result.stdout)
            status, pid = state["status"], state.get("pid", 0)
        except (ValueError, KeyError, TypeError) as exc:
            raise AgentError(f"unreadable runtime state: {exc}") from exc
        if not isinstance(status, str) or not isinstance(pid, int):
            raise AgentError("unreadable runtime state")
        return {"status": status, "pid": pid}

    async def delete(self, container_id: str, *, force: bool) -> None:
        container = await self._ready(container_id)
        async with container.lock:
            result = await self._call("delete", *(["--force"] if force else []), container_id)
            # NotFound: the runtime has forgotten it already; finish our side.
            with contextlib.suppress(NotFoundError):
                self._check("delete", result)
            if container.watcher is not None:
                # Let the exit event go out before the channel disappears.
                try:
                    async with asyncio.timeout(self._config.exit_drain_timeout + 1):
                        await asyncio.shield(container.watcher)
                except TimeoutError:
                    container.watcher.cancel()
            await container.cleanup.aclose()

    # --- for vmrt_agent.control (pause, resume, update, ps, stats) -----------

    async def runtime_verb(self, container_id: str, verb: str, *args: str) -> None:
        """``crun <verb> [args] <id>`` under the container's lock."""
        container = await self._ready(container_id)
        async with container.lock:
            self._check(verb, await self._call(verb, *args, container_id))

    async def bundle_of(self, container_id: str) -> str:
        """The bundle directory of a container whose create finished (its config.json)."""
        await self._ready(container_id)
        return self._config.bundle_dir(container_id)

    async def run_tool(self, argv: list[str], *, timeout: float) -> Completed:
        """Run a guest program to completion through the one reaper."""
        return await self._reaper.run(argv, timeout=timeout)

    def runtime_argv(self) -> list[str]:
        """The OCI runtime and its --root, as every runtime call starts."""
        return [self._config.runtime, "--root", self._config.runtime_root]

    # --- helpers -----------------------------------------------------------

    async def _ready(self, container_id: str) -> Container:
        bundle.validate_id(container_id)
        container = self._by_id.get(container_id)
        if container is None:
            raise NotFoundError()
        await container.ready.wait()
        if self._by_id.get(container_id) is not container:  # its create failed
            raise NotFoundError()
        return container

    async def _call(self, *args: str, log_file: str | None = None, stdin: int | None = None,
                    stdout: int | None = None, stderr: int | None = None) -> Completed:
        argv = [self._config.runtime, "--root", self._config.runtime_root]
        if log_file is not None:
            argv += ["--log", log_file, "--log-format", "json"]
        return await self._reaper.run([*argv, *args], timeout=self._config.runtime_timeout,
                                      stdin=stdin, stdout=stdout, stderr=stderr)

    def _check(self, verb: str, result: Completed, log_file: str | None = None) -> None:
        """Raise the error a failed runtime call means, keeping the runtime's text."""
        if result.returncode == 0:
            return
        text = _error_text(result.stderr, log_file) or f"exit status {result.returncode}"
        message = f"{os.path.basename(self._config.runtime)} {verb}: {text}"
        if "does not exist" in text:
            raise NotFoundError(message)
        if "not running" in text:
            raise NotRunningError(message)
        raise AgentError(message)


def _discard_pty(receiving: asyncio.Future[int]) -> None:
    """Stop waiting for crun's pty; close it if it came but create failed after all."""
    if not receiving.done():
        receiving.cancel()
        return
    if not receiving.cancelled() and receiving.exception() is None:
        os.close(receiving.result())


def _read_pid(path: str) -> int:
    try:
        with open(path) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError) as exc:
        raise AgentError(f"the runtime left no usable pid file: {exc}") from exc
    if pid <= 1:
        raise AgentError(f"the runtime reported pid {pid}")
    return pid


def _error_text(stderr: bytes, log_file: str | None = None) -> str:
    """The last error line of a runtime call: from its JSON log, else its stderr."""
    lines: list[str] = []
    if log_file is not None:
        with contextlib.suppress(OSError), open(log_file, errors="replace") as f:
            lines += f.read()[-65536:].splitlines()
    lines += stderr.decode(errors="replace").splitlines()
    found = ""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            found = line
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            found = str(entry.get("msg", line))
    return found[:1024]
