"""The agent's one exception hierarchy; each class carries the wire ``kind``.

Handlers raise these from plain functions and the server turns them into
error responses, so the mapping to docs/agent-protocol.md's kinds lives here
and nowhere else.  The texts that runc prints are kept, because the host passes
them on to containerd and CRI-O, which match on them.
"""

from __future__ import annotations

CONTAINER_NOT_EXISTS = "container does not exist"
CONTAINER_EXISTS = "container with given ID already exists"
CONTAINER_NOT_RUNNING = "container not running"


class AgentError(Exception):
    """Anything that makes a request fail; its text is the one-line ``error``."""

    kind = "error"


class NotFoundError(AgentError):
    kind = "not_found"

    def __init__(self, message: str = CONTAINER_NOT_EXISTS) -> None:
        super().__init__(message)


class NotRunningError(AgentError):
    kind = "not_running"

    def __init__(self, message: str = CONTAINER_NOT_RUNNING) -> None:
        super().__init__(message)


class InvalidError(AgentError):
    """The host sent arguments the agent refuses (bad id, a path escaping the share)."""

    kind = "invalid"
