"""`state`: the OCI state of a container, with its status derived from live processes."""

from __future__ import annotations

import os

from vmrt import OCI_VERSION
from vmrt.errors import VmrtError
from vmrt.runtime.context import Context
from vmrt.state import status
from vmrt.state.model import ContainerState, Status

TYPE_CHECKING = False  # typing is not imported at run time: `vmrt state` pays for every import
if TYPE_CHECKING:
    from typing import Any


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


def render_list(states: list[dict[str, Any]], fmt: str, quiet: bool) -> str:
    """`list`'s output, as runc prints it: ids, JSON (null for none), or a table."""
    if quiet:
        return "".join(f"{s['id']}\n" for s in states)
    if fmt == "json":
        import json

        return json.dumps(states or None) + "\n"  # runc prints null for no containers
    rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER", "POD")]
    rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"] or "root",
              s.get("sandbox", s["id"])) for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n"
                   for r in rows)
