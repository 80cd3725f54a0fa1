"""`checkpoint` and `restore`: refused.

runc hands a container to CRIU on the host. A vmrt container's processes live
in a VM, out of the host's reach; checkpointing would mean snapshotting the
whole pod VM (QEMU migration to a file), which vmrt does not do. Saying so
in one line beats a half-working imitation.
"""

from __future__ import annotations

from vmrt.errors import VmrtError
from vmrt.runtime.context import Context

_WHY = "vmrt runs containers inside a VM, where CRIU cannot reach them"


class UnsupportedError(VmrtError):
    pass


def checkpoint(ctx: Context, container_id: str) -> None:
    ctx.store.load_container(container_id)  # an unknown id is told as runc tells it
    raise UnsupportedError(f"checkpoint is not supported: {_WHY}")


def restore(ctx: Context, container_id: str) -> None:
    raise UnsupportedError(f"restore is not supported: {_WHY}")
