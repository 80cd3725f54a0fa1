"""The request table: one thin adapter per op, from wire arguments to a typed call.

Each adapter validates its ``args`` with the protocol's ``get_*`` helpers (the
host is not trusted to send well-formed requests either), builds the typed
request, and calls a plain function of :mod:`vmrt_agent.containers`.  Adapters
are called synchronously by the server, in the order the requests arrived,
and return an awaitable; ``create_container`` uses that to reserve its id and
channel before any later frame is routed.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from vmrt_agent import control, network, protocol, warmup
from vmrt_agent.containers import Containers, CreateRequest, KillRequest
from vmrt_agent.debug_shell import DebugShells
from vmrt_agent.errors import AgentError, InvalidError
from vmrt_agent.execs import ExecRequest, Execs
from vmrt_agent.protocol import ProtocolError, get_bool, get_dict, get_int, get_str

Result = dict[str, Any]
Args = dict[str, Any]

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}")


@dataclass(frozen=True, slots=True)
class Services:
    """What the handlers act on."""

    containers: Containers
    execs: Execs
    shells: DebugShells


Handler = Callable[[Services, Args], Awaitable[Result]]


def _id(args: Args) -> str:
    return get_str(args, "id", max_len=1024)


async def ping(services: Services, args: Args) -> Result:
    return {}


def create_container(services: Services, args: Args) -> Awaitable[Result]:
    req = CreateRequest(
        id=_id(args),
        channel=get_int(args, "channel", lo=1, hi=protocol.MAX_CHANNEL),
        share_tag=get_str(args, "share_tag", max_len=64),
        spec=get_dict(args, "spec"),
        terminal=get_bool(args, "terminal"),
        no_new_keyring=get_bool(args, "no_new_keyring"),
    )
    hostname = get_str(args, "pod_hostname", max_len=64, default="")
    if hostname:
        # The pod's UTS namespace is the VM's: its members that share it see this name.
        if not _HOSTNAME_RE.fullmatch(hostname):
            raise InvalidError(f"invalid hostname {hostname!r}")
        socket.sethostname(hostname)
    creating = services.containers.create(req)  # reserves id and channel now

    async def finish() -> Result:
        return {"pid": await creating}

    return finish()


async def start_container(services: Services, args: Args) -> Result:
    await services.containers.start(_id(args))
    return {}


async def kill_container(services: Services, args: Args) -> Result:
    req = KillRequest(id=_id(args), signal=get_int(args, "signal", lo=0, hi=64),
                      all=get_bool(args, "all"))
    await services.containers.kill(req)
    return {}


async def delete_container(services: Services, args: Args) -> Result:
    await services.containers.delete(_id(args), force=get_bool(args, "force"))
    return {}


async def state_container(services: Services, args: Args) -> Result:
    return await services.containers.state(_id(args))


async def setup_network(services: Services, args: Args) -> Result:
    configs = network.parse_all(args.get("interfaces"))
    return {"names": await network.setup(configs)}


# --- the rest of runc's surface (vmrt_agent.control) ------------------------

#: Bounds on ps(1) options from the host: a few short words.
_MAX_PS_ARGS: Final = 32


def _short_strings(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= _MAX_PS_ARGS and all(
        isinstance(a, str) and len(a) <= 256 and "\x00" not in a for a in value)


async def pause_container(services: Services, args: Args) -> Result:
    await control.pause(services.containers, _id(args))
    return {}


async def resume_container(services: Services, args: Args) -> Result:
    await control.resume(services.containers, _id(args))
    return {}


async def update_container(services: Services, args: Args) -> Result:
    await control.update(services.containers, _id(args), get_dict(args, "resources"))
    return {}


async def ps_container(services: Services, args: Args) -> Result:
    ps_args = args.get("ps_args")
    if ps_args is not None and not _short_strings(ps_args):
        raise ProtocolError("argument 'ps_args' must be a list of short strings")
    return await control.ps(services.containers, _id(args), ps_args)


async def stats_container(services: Services, args: Args) -> Result:
    return await control.stats(services.containers, _id(args))


async def resize_guest(services: Services, args: Args) -> Result:
    return await control.resize_guest(get_int(args, "vcpus", lo=1, hi=512))


def exec_process(services: Services, args: Args) -> Awaitable[Result]:
    req = ExecRequest(
        id=_id(args),
        exec_id=get_str(args, "exec_id", max_len=64),
        channel=get_int(args, "channel", lo=1, hi=protocol.MAX_CHANNEL),
        process=get_dict(args, "process"),
        terminal=get_bool(args, "terminal"),
    )
    starting = services.execs.exec(req)  # reserves the channel now

    async def finish() -> Result:
        return {"pid": await starting}

    return finish()


async def signal_process(services: Services, args: Args) -> Result:
    channel = get_int(args, "channel", lo=1, hi=protocol.MAX_CHANNEL)
    sig = get_int(args, "signal", lo=0, hi=64)
    if channel in services.shells:
        services.shells.signal(channel, sig)
    else:
        services.execs.signal(channel, sig)
    return {}


def debug_shell(services: Services, args: Args) -> Awaitable[Result]:
    starting = services.shells.open(get_int(args, "channel", lo=1, hi=protocol.MAX_CHANNEL),
                                    get_str(args, "term", max_len=64, default="vt100"))

    async def finish() -> Result:
        return {"pid": await starting}

    return finish()


async def warm_up(services: Services, args: Args) -> Result:
    return await warmup.warm_up(services.containers)


HANDLERS: Final[dict[str, Handler]] = {
    "ping": ping,
    "create_container": create_container,
    "exec_process": exec_process,
    "signal_process": signal_process,
    "debug_shell": debug_shell,
    "start_container": start_container,
    "kill_container": kill_container,
    "delete_container": delete_container,
    "state_container": state_container,
    "setup_network": setup_network,
    "pause_container": pause_container,
    "resume_container": resume_container,
    "update_container": update_container,
    "ps_container": ps_container,
    "stats_container": stats_container,
    "resize_guest": resize_guest,
    "warm_up": warm_up,
}


def error_kind(exc: BaseException) -> str:
    """The wire ``kind`` of an exception raised while serving a request."""
    if isinstance(exc, ProtocolError):
        return "invalid"  # an argument failed a get_* check
    if isinstance(exc, AgentError):
        return exc.kind
    return "error"
