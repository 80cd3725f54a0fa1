"""`vmrt check`: what this host offers a VM runtime, and what vmrt will use (like kata-runtime check)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from vmrt.runtime.context import Context


@dataclass(frozen=True)
class CheckItem:
    name: str
    ok: bool
    detail: str


def check(ctx: Context) -> list[CheckItem]:
    from vmrt.image import image_status
    from vmrt.vm.accel import probe

    cfg = ctx.config
    items = []
    try:
        out = subprocess.run([cfg.qemu, "--version"], capture_output=True, text=True, timeout=10,
                             check=True).stdout.splitlines()[0]
        items.append(CheckItem("qemu", True, f"{cfg.qemu}: {out}"))
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        items.append(CheckItem("qemu", False, f"{cfg.qemu} does not run: {exc}"))
    items.append(CheckItem("virtiofsd", os.access(cfg.virtiofsd, os.X_OK), cfg.virtiofsd))
    report = probe(cfg.accel)
    items.append(CheckItem("kvm", True, "; ".join(report.reasons)))
    items.append(CheckItem("accelerator", True,
                           f"{report.accel} (configured: {cfg.accel})"))
    ok, detail = image_status(cfg)
    items.append(CheckItem("guest image", ok, detail))
    return items
