from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from vmrt.runtime.context import Context

if TYPE_CHECKING:
    from vmrt.runtime.resources import Resources

_HELP = """update container resource constraints

With --resources (a file, or '-' for standard input) the document, in runc's
(OCI LinuxResources) format, is applied and every other option is ignored."""


@click.command("update", help=_HELP)
@click.option("-r", "--resources", "resources_file", default=None,
              help="path to the file containing the resources to update or '-' to read from "
                   "the standard input")
@click.option("--blkio-weight", default=None, help="Specifies per cgroup weight, range is from 10 to 1000")
@click.option("--cpu-period", default=None, help="CPU CFS period to be used for hardcapping (in usecs)")
@click.option("--cpu-quota", default=None, help="CPU CFS hardcap limit (in usecs)")
@click.option("--cpu-share", "--cpu-shares", "cpu_share", default=None,
              help="CPU shares (relative weight vs. other containers)")
@click.option("--cpu-rt-period", default=None, help="CPU realtime period (in usecs)")
@click.option("--cpu-rt-runtime", default=None, help="CPU realtime hardcap limit (in usecs)")
@click.option("--cpuset-cpus", default=None, help="CPU(s) to use")
@click.option("--cpuset-mems", default=None, help="Memory node(s) to use")
@click.option("--memory", default=None, help="Memory limit (in bytes)")
@click.option("--memory-reservation", default=None, help="Memory reservation or soft_limit (in bytes)")
@click.option("--memory-swap", default=None, help="Total memory usage (memory + swap)")
@click.option("--pids-limit", default=None, help="Maximum number of pids allowed in the container")
@click.option("--l3-cache-schema", default=None, hidden=True)
@click.option("--mem-bw-schema", default=None, hidden=True)
@click.argument("container_id")
@click.pass_obj
def command(ctx: Context, /, resources_file: str | None, container_id: str,
            **flags: str | None) -> None:
    from vmrt.runtime.update import update

    update(ctx, container_id, _resources(resources_file, flags))


def _resources(resources_file: str | None, flags: dict[str, str | None]) -> Resources:
    from vmrt.errors import InvalidArgumentError
    from vmrt.runtime import resources as res

    if resources_file is None:
        return res.from_flags(flags)
    if resources_file == "-":  # CRI-O's way
        return res.from_json_text(sys.stdin.buffer.read())
    try:
        with open(resources_file, "rb") as f:  # podman's way
            return res.from_json_text(f.read())
    except OSError as exc:
        raise InvalidArgumentError(
            f"open {resources_file}: {(exc.strerror or str(exc)).lower()}") from None
