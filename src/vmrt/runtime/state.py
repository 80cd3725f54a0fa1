"""`state`: the OCI state of a container, with its status derived from live processes."""

from __future__ import annotations

import os
from typing import Any

from vmrt import OCI_VERSION
from vmrt.errors import VmrtError
from vmrt.runtime.context import Context
from vmrt.state import status
from vmrt.state.model import ContainerState, Status


def oci_state(state: ContainerState) -> dict[str, Any]:
    current = status.current(state)
    pid = state.shim.pid if state.shim and current is not Status.STOPPED else 0
    doc: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "id": state.id,
        "pid": pid,
        "status": current.value,
        "bundle": state.bundle,
        "rootfs": os.path.join(state.bundle, "rootfs"),
        "created": state.created,
        "owner": "",
    }
    if state.annotations:
        doc["annotations"] = state.annotations
    if state.sandbox != state.id:
        doc["sandbox"] = state.sandbox
    return doc


def state(ctx: Context, container_id: str) -> dict[str, Any]:
    return oci_state(ctx.store.load_container(container_id))


def list_states(ctx: Context) -> list[dict[str, Any]]:
    out = []
    for cid in ctx.store.container_ids():
        try:
            out.append(oci_state(ctx.store.load_container(cid)))
        except VmrtError:  # a container deleted while we listed is simply not listed
            continue
    return out
