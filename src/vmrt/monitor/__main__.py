"""`python -m vmrt.monitor`: the entry `vmrt create` execs, detached, for each pod VM."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import TYPE_CHECKING

from vmrt import config
from vmrt.monitor.adopt import Adoption
from vmrt.paths import Root

if TYPE_CHECKING:
    from typing import Any


def main() -> int:
    # One JSON argument: the CLI resolved the image and accelerator already and said
    # so in its own error path; the monitor only needs the values.
    return run_spec(json.loads(sys.argv[1]))


def run_spec(spec: dict[str, Any]) -> int:
    """Be the sandbox monitor `spec` describes, until it ends. Also entered in-process by
    a warm pool VM's monitor once a sandbox claims it (`monitor.pooled`)."""
    cfg = config.load(spec.get("config_path"))
    root = Root.at(spec["root"])
    adopt = Adoption.from_json(spec["adopt"]) if spec.get("adopt") else None
    launched = None
    if adopt is None:
        # QEMU first: it boots while this process imports asyncio, QMP and the monitor.
        # A failure here is left to Monitor.boot, which launches again and reports it.
        from vmrt.monitor.launch import launch

        sbdir = root.sandbox(spec["sandbox_id"])
        with contextlib.suppress(Exception):
            launched = launch(cfg, name=spec["sandbox_id"], kernel=spec["kernel"],
                              initrd=spec["initrd"],
                              kernel_cmdline=tuple(spec["kernel_cmdline"]),
                              root_image=spec["root_image"], accel=spec["accel"],
                              console_log=sbdir.console_log, qemu_log=sbdir.qemu_log)
    from vmrt.monitor.main import MonitorArgs, run

    args = MonitorArgs(
        root=root, sandbox_id=spec["sandbox_id"], name=spec["name"],
        kernel=spec["kernel"], initrd=spec["initrd"],
        kernel_cmdline=tuple(spec["kernel_cmdline"]), root_image=spec["root_image"],
        accel=spec["accel"], config=cfg, adopt=adopt, launched=launched)
    return run(args, int(spec["ready_fd"]))


if __name__ == "__main__":
    sys.exit(main())
