"""Entry point: PID 1 in the guest, or a plain process on a host for tests.

As PID 1 the agent must never return: the kernel panics when init exits, and
the panic text hides the reason.  So any fatal error is written to
/dev/console (the serial console the host keeps in console.log) and the VM is
powered off.  Outside a VM (pid != 1) the PID-1 duties are skipped, the port
and nonce come from the command line, and the agent makes itself a child
subreaper so container processes are re-parented to it as they would be to
PID 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import traceback
from typing import TYPE_CHECKING, NoReturn, TextIO

from vmrt_agent import linux, protocol, shares, sysinit
from vmrt_agent.config import AgentConfig
from vmrt_agent.server import Server

if TYPE_CHECKING:
    import argparse

log = logging.getLogger("vmrt_agent")

CONSOLE = "/dev/console"


def main(argv: list[str] | None = None) -> None:
    if os.getpid() == 1:
        _main_pid1()
    else:
        _main_host(sys.argv[1:] if argv is None else argv)


async def _serve(fd: int, config: AgentConfig, nonce: str, *, exit_on_eof: bool) -> None:
    await Server(fd, config, nonce=nonce, exit_on_eof=exit_on_eof).serve()


def _setup_logging(stream: TextIO, debug: bool) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("vmrt-agent: %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.INFO)


# --- in the guest -----------------------------------------------------------


def _main_pid1() -> NoReturn:
    try:
        sysinit.mount_filesystems()
        console = _open_console()
        _setup_logging(console, debug=sysinit.kernel_arg("vmrt.debug") not in (None, "0"))
        sysinit.enable_controllers()
        sysinit.loopback_up()
        nonce = sysinit.kernel_arg("vmrt.nonce") or ""
        if not nonce or len(nonce) > 128 or not all(c in "0123456789abcdefABCDEF" for c in nonce):
            raise RuntimeError("no valid vmrt.nonce= on the kernel command line")
        fd = sysinit.open_port(protocol.AGENT_PORT_NAME)
        log.info("serving on %s", protocol.AGENT_PORT_NAME)
        config = AgentConfig(no_pivot=sysinit.root_is_initramfs())
        asyncio.run(_serve(fd, config, nonce, exit_on_eof=False))
        raise RuntimeError("the agent's loop ended")
    except BaseException as exc:
        _fatal(exc)


def _open_console() -> TextIO:
    """The serial console as a line-buffered stream, also made fds 0-2.

    Children spawned before a redirect must not get fds 0-2 that happen to be
    the agent's pipes or port, so the three are always held by something.
    """
    fd = os.open(CONSOLE, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDWR)
    for target, source in ((0, null), (1, fd), (2, fd)):
        try:
            os.fstat(target)
        except OSError:
            os.dup2(source, target, inheritable=False)
    if null > 2:
        os.close(null)
    return open(fd, "w", buffering=1, errors="replace", closefd=True)  # noqa: SIM115


def _fatal(exc: BaseException) -> NoReturn:
    text = "".join(traceback.format_exception(exc))
    message = f"vmrt-agent: fatal: {exc!r}\n{text}vmrt-agent: powering off\n".encode(
        errors="replace")
    try:
        fd = os.open(CONSOLE, os.O_WRONLY | os.O_NOCTTY)
    except OSError:
        fd = 2
    with contextlib.suppress(OSError):
        os.write(fd, message)
    with contextlib.suppress(OSError):
        linux.power_off()
    while True:  # power-off failed; exiting PID 1 would panic and hide the message
        time.sleep(3600)


# --- on a host --------------------------------------------------------------


def _parse_args(argv: list[str]) -> argparse.Namespace:
    import argparse  # the host-side entry's only: as PID 1 under TCG it cost ≈80 ms of boot

    defaults = AgentConfig()
    parser = argparse.ArgumentParser(prog="vmrt_agent", description=__doc__)
    port = parser.add_mutually_exclusive_group(required=True)
    port.add_argument("--port-fd", type=int, help="an inherited fd to serve (a socket)")
    port.add_argument("--port", help="a path to open and serve (a virtio port)")
    parser.add_argument("--nonce", default=os.environ.get("VMRT_NONCE", ""))
    parser.add_argument("--runtime", default=defaults.runtime)
    parser.add_argument("--runtime-root", default=defaults.runtime_root)
    parser.add_argument("--base-dir", default=defaults.base_dir)
    parser.add_argument("--share-source", metavar="DIR",
                        help="bind-mount shares from DIR/<tag> instead of virtio-fs")
    parser.add_argument("--debug", action="store_true")
    return parser.parse_args(argv)


def _main_host(argv: list[str]) -> None:
    args = _parse_args(argv)
    _setup_logging(sys.stderr, args.debug)
    if args.port_fd is not None:
        fd = args.port_fd
        os.set_inheritable(fd, False)  # crun and containers must not get the port
    else:
        fd = os.open(args.port, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    mount_share = (shares.bind_from(args.share_source) if args.share_source
                   else shares.mount_virtiofs)
    config = AgentConfig(runtime=args.runtime, runtime_root=args.runtime_root,
                         base_dir=args.base_dir, mount_share=mount_share)
    linux.set_child_subreaper()
    asyncio.run(_serve(fd, config, args.nonce, exit_on_eof=True))
