"""`python -m vmrt.monitor`: the entry `vmrt create` execs, detached, for each pod VM."""

from __future__ import annotations

import json
import sys

from vmrt import config
from vmrt.monitor.adopt import Adoption
from vmrt.monitor.main import MonitorArgs, run
from vmrt.paths import Root


def main() -> int:
    # One JSON argument: the CLI resolved the image and accelerator already and said
    # so in its own error path; the monitor only needs the values.
    spec = json.loads(sys.argv[1])
    cfg = config.load(spec.get("config_path"))
    args = MonitorArgs(
        root=Root.at(spec["root"]), sandbox_id=spec["sandbox_id"], name=spec["name"],
        kernel=spec["kernel"], initrd=spec["initrd"],
        kernel_cmdline=tuple(spec["kernel_cmdline"]), root_image=spec["root_image"],
        accel=spec["accel"], config=cfg,
        adopt=Adoption.from_json(spec["adopt"]) if spec.get("adopt") else None)
    return run(args, int(spec["ready_fd"]))


if __name__ == "__main__":
    sys.exit(main())
