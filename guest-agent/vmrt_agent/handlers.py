"""The request table: one thin adapter per op, from wire arguments to a typed call.

Each adapter validates its ``args`` with the protocol's ``get_*`` helpers (the
host is not trusted to send well-formed requests either), builds the typed
request, and calls a plain function of :mod:`vmrt_agent.containers`.  Adapters
are called synchronously by the server, in the order the requests arrived,
and return an awaitable; ``create_container`` uses that to reserve its id and
channel before any later frame is routed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from vmrt_agent import protocol
from vmrt_agent.containers import Containers, CreateRequest, KillRequest
from vmrt_agent.errors import AgentError
from vmrt_agent.protocol import ProtocolError, get_bool, get_dict, get_int, get_str

Result = dict[str, Any]
Args = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Services:
    """What the handlers act on."""

    containers: Containers


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


HANDLERS: Final[dict[str, Handler]] = {
    "ping": ping,
    "create_container": create_container,
    "start_container": start_container,
    "kill_container": kill_container,
    "delete_container": delete_container,
    "state_container": state_container,
}


def error_kind(exc: BaseException) -> str:
    """The wire ``kind`` of an exception raised while serving a request."""
    if isinstance(exc, ProtocolError):
        return "invalid"  # an argument failed a get_* check
    if isinstance(exc, AgentError):
        return exc.kind
    return "error"
