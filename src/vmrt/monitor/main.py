"""The sandbox monitor: one process per pod VM, the sole owner of QMP and the agent port.

It is exec'd detached by `vmrt create`, boots QEMU, waits for the agent's
hello, then serves CLI calls and shims on `monitor.sock` until the sandbox
is shut down or QEMU dies. When QEMU dies, every process still running in
the VM is reported to its shim as killed (SIGKILL), so no client waits on a
workload that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from dataclasses import dataclass
from typing import Any

from vmrt import log, protocol
from vmrt.config import Config
from vmrt.errors import MonitorError, SandboxError, VMLaunchError, VmrtError
from vmrt.monitor import debugging, launch, ratelimit, shares
from vmrt.monitor.adopt import AdoptedQemu, Adoption
from vmrt.monitor.agent_link import AgentLink
from vmrt.monitor.channels import ProcessChannel
from vmrt.monitor.jit_trim import JitTrimmer
from vmrt.monitor.launch import Launched
from vmrt.monitor.network import PodNetwork
from vmrt.monitor.sizing import VMSizer
from vmrt.paths import Root, SandboxDir
from vmrt.protocol import ExitStatus, FrameType
from vmrt.state.model import Device, ProcessRef
from vmrt.state.store import Store
from vmrt.util.proc import start_time
from vmrt.util.record import replace
from vmrt.util.sockets import bind_unix
from vmrt.vm import qemu
from vmrt.vm.qmp import QMP

#: How long a container whose virtiofsd died gets to exit before its VM is stopped.
LOST_EXIT_WAIT_S = 3.0


@dataclass(frozen=True)
class MonitorArgs:
    root: Root
    sandbox_id: str
    name: str
    kernel: str
    initrd: str
    kernel_cmdline: tuple[str, ...]
    root_image: str
    accel: str
    config: Config
    #: A warm pool VM handed over by `monitor.pooled` (the process this monitor runs in).
    adopt: Adoption | None = None
    #: QEMU launched by __main__ before the monitor's imports; None: boot() launches it.
    launched: Launched | None = None


@dataclass
class ContainerEntry:
    id: str
    channel: ProcessChannel
    share: shares.Share
    guest_pid: int
    #: Its virtiofsd died: the guest can finish no request on the share, nor let go of it.
    share_lost: bool = False


class Monitor:
    def __init__(self, args: MonitorArgs) -> None:
        self.args = args
        self.cfg = args.config
        self.sbdir: SandboxDir = args.root.sandbox(args.sandbox_id)
        self.store = Store(args.root)
        self.log = log.Logger(str(self.sbdir.monitor_log), "json", True,
                              {"sandbox": args.sandbox_id})
        self.qmp = QMP(f"vmrt-{args.sandbox_id}")
        self._guest_log = ratelimit.Bucket()
        self.agent: AgentLink | None = None
        self.qemu: Any = None
        self.containers: dict[str, ContainerEntry] = {}
        self.channels: dict[int, ProcessChannel] = {}
        self.done = asyncio.Event()
        self.device_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.network = PodNetwork(
            qmp=self.qmp, agent=lambda: self.agent, store=self.store,
            sandbox_id=args.sandbox_id, device_lock=self.device_lock,
            slots=self.cfg.hotplug_slots, timeout=self.cfg.request_timeout_s, log=self.log)
        self.sizer = VMSizer(qmp=self.qmp, agent=lambda: self.agent, store=self.store,
                             sandbox_id=args.sandbox_id, cfg=self.cfg, accel=args.accel,
                             log=self.log)
        self.jit = JitTrimmer(qmp=self.qmp, qemu_pid=lambda: self.qemu.pid,
                              lock=self.device_lock, spawn=self._spawn, log=self.log,
                              enabled=args.accel == "tcg")  # KVM translates nothing

    # --- boot ----------------------------------------------------------------

    async def boot(self) -> None:
        if self.args.adopt is not None:
            await self._adopt(self.args.adopt)
            return
        # Usually launched already, by __main__ before it imported this module.
        launched = self.args.launched or launch.launch(
            self.cfg, name=self.args.sandbox_id, kernel=self.args.kernel,
            initrd=self.args.initrd, kernel_cmdline=self.args.kernel_cmdline,
            root_image=self.args.root_image, accel=self.args.accel,
            console_log=self.sbdir.console_log, qemu_log=self.sbdir.qemu_log)
        self.log.info("launching qemu", argv=launched.argv)
        qmp_host, agent_host, nonce = launched.qmp, launched.agent, launched.nonce
        self.qemu = launched.qemu
        self._watch_qemu(self.qemu.pid)
        self.agent = AgentLink(agent_host, self._on_agent_event, self._on_agent_close)
        await self.agent.start()
        try:
            await self.qmp.connect(qmp_host)
            await self.agent.wait_hello(nonce, self.cfg.boot_timeout_s)
        except VmrtError as exc:
            tail = qemu.QemuProcess(self.qemu, qmp_host, agent_host, self.sbdir.qemu_log).log_tail()
            raise VMLaunchError(f"{exc}{': ' + tail if tail else ''}") from exc

    async def _adopt(self, adopted: Adoption) -> None:
        """Take over the warm pool VM that `monitor.pooled`, in this same process, booted:
        QEMU (its child), the agent port past its hello, and QMP not yet negotiated (its
        greeting waits in the socket)."""
        self.log.info("adopted a warm pool VM", qemu=adopted.qemu_pid)
        self.qemu = AdoptedQemu(adopted.qemu_pid)
        self._watch_qemu(self.qemu.pid)
        self.agent = AgentLink(adopted.agent_socket(), self._on_agent_event, self._on_agent_close)
        await self.agent.start(greeted=True)
        await self.qmp.connect(adopted.qmp_socket())

    def _watch_qemu(self, pid: int) -> None:
        pidfd = os.pidfd_open(pid)
        loop = asyncio.get_running_loop()

        def gone() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self.log.warning("qemu exited", code=self.qemu.poll())
            self._vm_gone("the VM exited")

        loop.add_reader(pidfd, gone)

    def _vm_gone(self, reason: str) -> None:
        for ch in self.channels.values():
            ch.exit(ExitStatus(signal=signal.SIGKILL))
        self.done.set()

    def _on_agent_close(self) -> None:
        if not self.done.is_set():
            self.log.warning("agent link closed")
            self._vm_gone("the guest agent went away")

    def _on_agent_event(self, msg: dict[str, Any]) -> None:
        if msg.get("event") == "exit":
            channel = msg.get("channel")
            try:
                status = ExitStatus.parse(msg.get("status"))
            except protocol.ProtocolError as exc:
                if self._guest_log.allow():
                    self.log.warning("bad exit event from the guest", error=str(exc))
                return
            ch = self.channels.get(channel) if isinstance(channel, int) else None
            if ch is not None:
                ch.exit(status)
        elif self._guest_log.allow():  # the guest chooses how many: bounded on the host's disk
            self.log.debug("agent event", event=str(msg.get("event"))[:64],
                           dropped=self._guest_log.dropped)

    def _send_agent(self, data: bytes) -> None:
        assert self.agent is not None
        self.agent.send(data)

    # --- requests ------------------------------------------------------------

    async def serve(self, ready_fd: int) -> None:
        listener = (self.args.adopt.listener() if self.args.adopt is not None
                    else bind_unix(self.sbdir.monitor_sock))
        server = await asyncio.start_unix_server(self._session, sock=listener)
        # The booting `create` holds the sandbox lock while it waits for this line, and
        # records these pids itself: taking the lock here would deadlock with it.
        pid = os.getpid()
        _report(ready_fd, {"ok": True, "monitor": [pid, start_time(pid) or 0],
                           "qemu": [self.qemu.pid, start_time(self.qemu.pid) or 0],
                           "accel": self.args.accel, "vcpus": self.cfg.vcpus,
                           "memory_mib": self.cfg.memory_mib})
        self.jit.poke()  # the boot filled the translation cache (and flushed it) once
        async with server:
            await self.done.wait()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = protocol.Decoder()
        attached: ProcessChannel | None = None
        try:
            while data := await reader.read(65536):
                for frame in decoder.feed(data):
                    if frame.type is FrameType.REQUEST:
                        req = protocol.Request.parse(frame.json())
                        if req.op == "attach":
                            attached = self._attach(req, writer)
                            continue
                        self._spawn(self._handle(req, writer))
                    elif attached is not None:
                        attached.from_shim(frame)
                    else:
                        raise protocol.ProtocolError(f"unexpected {frame.type.name} frame")
                if attached is not None:
                    await attached.stdin_room.wait()
        except (protocol.ProtocolError, ConnectionError, SandboxError) as exc:
            self.log.warning("session dropped", error=str(exc))
        finally:
            if attached is not None:
                attached.detach()
                if attached.exit_status is None and not self.done.is_set():
                    # The shim is the container for its caller; with it gone nobody can
                    # reap the workload, so it must not outlive it (cc-shim's watcher rule).
                    self.log.warning("shim went away; killing its process",
                                     container=attached.container_id)
                    if self._is_init(attached):
                        self._spawn(self._kill_quietly(attached.container_id))
                    else:  # an exec'd process or a debug console: that process only
                        self._spawn(self._signal_quietly(attached.channel, signal.SIGKILL))
                elif attached.exit_status is not None and not self._is_init(attached):
                    self._drop_channel(attached.channel)  # reported and read: done with
            writer.close()

    def _is_init(self, channel: ProcessChannel) -> bool:
        entry = self.containers.get(channel.container_id)
        return entry is not None and entry.channel is channel

    def _drop_channel(self, number: int) -> None:
        if self.agent is not None:
            self.agent.unregister_channel(number)
        self.channels.pop(number, None)

    def _attach(self, req: protocol.Request, writer: asyncio.StreamWriter) -> ProcessChannel:
        number = protocol.get_int(req.args, "channel", lo=1)
        channel = self.channels.get(number)
        if channel is None:
            writer.write(protocol.response_error(req.id, "no such process", "not_found"))
            raise SandboxError(f"attach to unknown channel {number}")
        writer.write(protocol.response_ok(req.id, {"channel": number}))
        channel.attach(writer)
        return channel

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, req: protocol.Request, writer: asyncio.StreamWriter) -> None:
        try:
            result = await self._dispatch(req)
            writer.write(protocol.response_ok(req.id, result))
        except MonitorError as exc:
            writer.write(protocol.response_error(req.id, str(exc), exc.kind))
        except (VmrtError, protocol.ProtocolError) as exc:
            writer.write(protocol.response_error(req.id, str(exc)))
        except Exception as exc:  # a bug must answer the caller, not hang it
            self.log.error("request failed", op=req.op, error=repr(exc))
            writer.write(protocol.response_error(req.id, f"internal error: {exc!r}"))
        self.jit.poke()
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    async def _dispatch(self, req: protocol.Request) -> dict[str, Any]:
        args = req.args
        timeout = self.cfg.request_timeout_s
        match req.op:
            case "ping":
                return {}
            case "create_container":
                return await self._create(args)
            case ("start_container" | "kill_container" | "state_container" | "pause_container"
                  | "resume_container" | "update_container" | "ps_container" | "stats_container"):
                cid = protocol.get_str(args, "id")
                self._require(cid)
                assert self.agent is not None
                return await self.agent.call(req.op, timeout=timeout, **args)
            case "vm_fit" | "vm_release" | "vm_size":
                return await self.sizer.handle(req.op, args)
            case "exec_process":
                return await self._exec(args)
            case "signal_process":
                return await self._signal(args)
            case "delete_container":
                return await self._delete(protocol.get_str(args, "id"),
                                          protocol.get_bool(args, "force"))
            case "shutdown":
                self._spawn(self.shutdown())
                return {}
            case "devices":
                chardevs = await self.qmp.execute("query-chardev")
                return {"pci": await self.qmp.query_pci_ids(),
                        "chardevs": sorted(c["label"] for c in chardevs)}
            case "info":
                return {"containers": sorted(self.containers), "qemu_pid": self.qemu.pid}
            case "attach_network":
                return await self.network.attach()
            case "detach_network":
                return await self.network.detach_all()
            case "network_info":
                return await self.network.info()
            case "debug_console":
                return await self._debug_console(args)
            case "qmp":  # `vmrt debug qmp`: QMP has one owner, so it goes through here
                command, arguments = debugging.parse_qmp(args)
                self.log.warning("debug qmp", command=command, arguments=arguments)
                return {"return": await self.qmp.execute(command, arguments)}
            case _:
                raise MonitorError(f"unknown request {req.op!r}", "invalid")

    def _require(self, cid: str) -> ContainerEntry:
        entry = self.containers.get(cid)
        if entry is None:
            raise MonitorError("container does not exist", "not_found")
        return entry

    async def _create(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = protocol.get_str(args, "id")
        if cid in self.containers:
            raise MonitorError("container with given ID already exists", "exists")
        spec = self._join_sandbox_namespaces(protocol.get_dict(args, "spec"))
        rootfs = protocol.get_str(args, "rootfs")
        binds = [shares.BindSource(protocol.get_str(b, "name"), protocol.get_str(b, "source"))
                 for b in args.get("binds", [])]
        terminal = protocol.get_bool(args, "terminal")
        no_new_keyring = protocol.get_bool(args, "no_new_keyring")
        pod_hostname = protocol.get_str(args, "pod_hostname", default="", max_len=64)
        assert self.agent is not None
        async with self.device_lock:
            state = self.store.load_sandbox(self.args.sandbox_id)
            used = {d.slot for d in state.devices}
            slot = next((s for s in range(self.cfg.hotplug_slots) if s not in used), None)
            if slot is None:
                raise MonitorError(f"no free hot-plug slot in the VM ({self.cfg.hotplug_slots} used)")
            channel_no = self._alloc_channel()
            share = await shares.plug(self.qmp, self.sbdir, self.cfg.virtiofsd, cid, slot,
                                      rootfs, binds, self.sbdir.path / "virtiofsd.log")
            device = Device(share.device_id, "virtiofs", slot, cid,
                            ProcessRef(share.virtiofsd.pid, start_time(share.virtiofsd.pid) or 0))
            self.store.update_sandbox(self.args.sandbox_id, lambda s: replace(
                s, devices=(*s.devices, device)))
        channel = ProcessChannel(cid, channel_no, self._send_agent)
        self.channels[channel_no] = channel
        self.agent.register_channel(channel_no, channel.from_agent)
        try:
            result = await self.agent.call(
                "create_container", timeout=self.cfg.request_timeout_s, id=cid,
                channel=channel_no, share_tag=share.tag, spec=spec, terminal=terminal,
                no_new_keyring=no_new_keyring, pod_hostname=pod_hostname)
        except BaseException:
            self.agent.unregister_channel(channel_no)
            del self.channels[channel_no]
            await self._unplug(share)
            raise
        pid = result.get("pid")
        self.containers[cid] = ContainerEntry(cid, channel, share, pid if isinstance(pid, int) else 0)
        self._watch_share(self.containers[cid])
        return {"channel": channel_no, "guest_pid": self.containers[cid].guest_pid}

    async def _unplug(self, share: shares.Share) -> None:
        async with self.device_lock:
            try:
                await shares.unplug(self.qmp, share)
            finally:
                self.store.update_sandbox(self.args.sandbox_id, lambda s: replace(
                    s, devices=tuple(d for d in s.devices if d.id != share.device_id)))

    async def _delete(self, cid: str, force: bool) -> dict[str, Any]:
        entry = self._require(cid)
        assert self.agent is not None
        if entry.share_lost or entry.share.virtiofsd.poll() is not None:
            return await self._delete_lost(entry)
        await self.agent.call("delete_container", timeout=self.cfg.request_timeout_s,
                              id=cid, force=force)
        self._forget_channels(cid)
        del self.containers[cid]
        await self._unplug(entry.share)
        if self.containers:  # a VM that goes with its last container is not worth shrinking
            self._spawn(self.sizer.release_quietly(cid))
        return {}

    def _watch_share(self, entry: ContainerEntry) -> None:
        from vmrt.monitor import watch

        def gone() -> None:
            if self.containers.get(entry.id) is entry and not self.done.is_set():
                self._spawn(self._lose_container(entry))

        watch.on_exit(entry.share.virtiofsd.pid, gone)

    async def _lose_container(self, entry: ContainerEntry) -> None:
        """virtiofsd died under a live container: its root is gone for good, so it is
        killed. A process of it blocked on the dead share (a FUSE request in flight, a
        close that must flush) can never be killed in the guest: then the VM goes, as
        Kata stops the VM when its virtiofsd dies, rather than report a lie."""
        entry.share_lost = True
        self.log.warning("virtiofsd died; killing its container", container=entry.id,
                         code=entry.share.virtiofsd.poll())
        self._spawn(self._kill_quietly(entry.id))
        try:
            async with asyncio.timeout(LOST_EXIT_WAIT_S):
                await entry.channel.exited.wait()
        except TimeoutError:
            self.log.warning("the guest cannot stop a container on a dead share; stopping the VM",
                             container=entry.id)
            self._vm_gone("a container hangs on a dead share")

    async def _delete_lost(self, entry: ContainerEntry) -> dict[str, Any]:
        """Forget a container whose share is dead without waiting on the guest for what it
        cannot do (unmount, unplug: DEVICE_DELETED never comes); its slot stays taken."""
        self._spawn(self._agent_delete_quietly(entry.id))  # may never finish in the guest
        self._forget_channels(entry.id)
        self.containers.pop(entry.id, None)
        entry.share.virtiofsd.kill()
        await asyncio.to_thread(entry.share.virtiofsd.wait)
        shares._unstage(entry.share.staging)
        return {}

    def _join_sandbox_namespaces(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A member sharing the infra container's pid namespace gets its guest path; with
        no infra container (a lazy pod) it shares the VM's own."""
        from vmrt.runtime.guestspec import JOIN_SANDBOX

        linux = spec.get("linux")
        if not isinstance(linux, dict) or not isinstance(linux.get("namespaces"), list):
            return spec
        infra = self.containers.get(self.args.sandbox_id)
        namespaces = []
        for ns in linux["namespaces"]:
            if isinstance(ns, dict) and ns.get("path") == JOIN_SANDBOX:
                if infra is None or infra.guest_pid <= 1:
                    continue
                ns = {**ns, "path": f"/proc/{infra.guest_pid}/ns/{ns.get('type')}"}
            namespaces.append(ns)
        return {**spec, "linux": {**linux, "namespaces": namespaces}}

    def _alloc_channel(self) -> int:
        state = self.store.update_sandbox(self.args.sandbox_id, lambda s: replace(
            s, next_channel=s.next_channel + 1))
        return state.next_channel - 1

    async def _exec(self, args: dict[str, Any]) -> dict[str, Any]:
        """Start another process in a container, on a channel of its own."""
        cid = protocol.get_str(args, "id")
        self._require(cid)
        assert self.agent is not None
        number = self._alloc_channel()
        channel = ProcessChannel(cid, number, self._send_agent)
        self.channels[number] = channel
        self.agent.register_channel(number, channel.from_agent)
        try:
            result = await self.agent.call(
                "exec_process", timeout=self.cfg.request_timeout_s, id=cid,
                exec_id=f"exec{number}", channel=number, process=protocol.get_dict(args, "process"),
                terminal=protocol.get_bool(args, "terminal"))
        except BaseException:
            self.agent.unregister_channel(number)
            self.channels.pop(number, None)
            raise
        return {"channel": number, "pid": result.get("pid", 0)}

    async def _debug_console(self, args: dict[str, Any]) -> dict[str, Any]:
        """`vmrt debug console`: a shell in the guest, outside the containers, on a channel."""
        assert self.agent is not None
        number = self._alloc_channel()
        channel = ProcessChannel(debugging.CONSOLE_OWNER, number, self._send_agent)
        self.channels[number] = channel
        self.agent.register_channel(number, channel.from_agent)
        self.log.warning("debug console opened", channel=number)
        try:
            result = await self.agent.call("debug_shell", timeout=self.cfg.request_timeout_s,
                                           channel=number,
                                           term=protocol.get_str(args, "term", max_len=64))
        except BaseException:
            self.agent.unregister_channel(number)
            self.channels.pop(number, None)
            raise
        return {"channel": number, "pid": result.get("pid", 0)}

    async def _signal_quietly(self, channel: int, sig: int) -> None:
        with contextlib.suppress(VmrtError):
            assert self.agent is not None
            await self.agent.call("signal_process", timeout=5, channel=channel, signal=int(sig))

    async def _signal(self, args: dict[str, Any]) -> dict[str, Any]:
        """A shim relays a signal to its process: a container's init, or an exec'd one."""
        number = protocol.get_int(args, "channel", lo=1)
        sig = protocol.get_int(args, "signal", lo=0, hi=64)
        channel = self.channels.get(number)
        if channel is None:
            raise MonitorError("no such process", "not_found")
        assert self.agent is not None
        entry = self.containers.get(channel.container_id)
        if entry is not None and entry.channel is channel:
            return await self.agent.call("kill_container", timeout=self.cfg.request_timeout_s,
                                         id=channel.container_id, signal=sig, all=False)
        return await self.agent.call("signal_process", timeout=self.cfg.request_timeout_s,
                                     channel=number, signal=sig)

    def _forget_channels(self, cid: str) -> None:
        assert self.agent is not None
        for number in [n for n, ch in self.channels.items() if ch.container_id == cid]:
            self.agent.unregister_channel(number)
            self.channels.pop(number, None)

    async def _agent_delete_quietly(self, cid: str) -> None:
        with contextlib.suppress(VmrtError):
            assert self.agent is not None
            await self.agent.call("delete_container", timeout=self.cfg.request_timeout_s,
                                  id=cid, force=True)

    async def _kill_quietly(self, cid: str) -> None:
        with contextlib.suppress(VmrtError):
            assert self.agent is not None
            await self.agent.call("kill_container", timeout=5, id=cid,
                                  signal=int(signal.SIGKILL), all=True)

    # --- teardown ------------------------------------------------------------

    async def shutdown(self) -> None:
        self.log.info("shutting down")
        self.done.set()

    async def teardown(self) -> None:
        """Stop QEMU (quit, then SIGKILL) and every virtiofsd; remove the sockets."""
        self.jit.close()
        with contextlib.suppress(Exception):  # NICs out and tc redirects off, while QEMU lives
            async with asyncio.timeout(15):
                await self.network.detach_all()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                await self.qmp.quit()
        if self.qemu is not None and self.qemu.poll() is None:
            self.qemu.kill()
        if self.qemu is not None:
            await asyncio.to_thread(self.qemu.wait)
        for entry in self.containers.values():
            entry.share.virtiofsd.kill()
            await asyncio.to_thread(entry.share.virtiofsd.wait)
            shares._unstage(entry.share.staging)
        if self.agent is not None:
            await self.agent.close()
        with contextlib.suppress(FileNotFoundError):
            self.sbdir.monitor_sock.unlink()
        with contextlib.suppress(VmrtError, OSError):
            self.store.update_sandbox(self.args.sandbox_id, lambda s: replace(s, devices=()))


def _report(fd: int, msg: dict[str, Any]) -> None:
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(msg) + "\n").encode())
        os.close(fd)


async def _main(args: MonitorArgs, ready_fd: int) -> int:
    mon = Monitor(args)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, mon.done.set)
    try:
        await mon.boot()
        await mon.serve(ready_fd)
        return 0
    except (VmrtError, OSError) as exc:
        # The booting `create` waits on this line (holding the sandbox's lock): it goes
        # first, before a log write that may fail the same way (a full disk).
        _report(ready_fd, {"ok": False, "error": str(exc)})
        with contextlib.suppress(OSError):
            mon.log.error("monitor failed", error=str(exc))
        return 1
    finally:
        await mon.teardown()


def run(args: MonitorArgs, ready_fd: int) -> int:
    return asyncio.run(_main(args, ready_fd))

