"""One exception hierarchy for vmrt.

Texts that runc prints are API: containerd's shim and CRI-O match on them
("container does not exist", "container not running", ...), so those
messages are kept verbatim here and nowhere else.
"""

from __future__ import annotations

CONTAINER_NOT_EXISTS = "container does not exist"
CONTAINER_EXISTS = "container with given ID already exists"
CONTAINER_NOT_RUNNING = "container not running"
CONTAINER_PAUSED = "container is paused"
CONTAINER_NOT_PAUSED = "container not paused"


class VmrtError(Exception):
    """Root of every error vmrt reports; its text is the one line the user sees."""

    exit_code = 1


class NotFoundError(VmrtError):
    def __init__(self, message: str = CONTAINER_NOT_EXISTS) -> None:
        super().__init__(message)


class ExistsError(VmrtError):
    def __init__(self, message: str = CONTAINER_EXISTS) -> None:
        super().__init__(message)


class InvalidArgumentError(VmrtError):
    """The user gave something vmrt will not accept (an id, a signal, a flag)."""


class ConfigError(VmrtError):
    """A bundle's config.json, or vmrt's own configuration, is unusable."""


class StateTransitionError(VmrtError):
    """A verb that does not apply to the container's current status."""


class SandboxError(VmrtError):
    """The pod VM is missing, dead, or refused a request."""


class MonitorError(SandboxError):
    """The sandbox monitor could not be reached or answered with an error."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


class VMLaunchError(SandboxError):
    """QEMU did not come up; the text carries the tail of its log."""


class ImageError(VmrtError):
    """The guest image is missing or could not be built."""
