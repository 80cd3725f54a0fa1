from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from vmrt.runtime.context import Context

if TYPE_CHECKING:
    from vmrt.runtime.debug import ProcessInfo

SANDBOX_HELP = "SANDBOX is a pod VM's id, or the id of a container in it"


@click.group("debug", help="look inside pod VMs: list them, run QMP, read their logs, open a shell")
def command() -> None:
    pass


def _bind_sandbox(name: str) -> None:
    """--log records of a debug command name the pod VM it looked at."""
    from vmrt import log

    log.get().context["sandbox"] = name


@command.command("ls", help="list pod VMs with their QEMU, size, devices and members")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
def ls(ctx: Context, fmt: str) -> None:
    from vmrt.runtime.debug import list_vms

    vms = list_vms(ctx)
    if fmt == "json":
        click.echo(json.dumps([vm.to_json() for vm in vms], indent=2))
        return
    rows = [("SANDBOX", "STATUS", "QEMU", "MONITOR", "ACCEL", "VCPUS", "MEMORY", "DEVICES", "MEMBERS")]
    for vm in vms:
        devices = ",".join(f"{d.kind}:{d.owner}@{d.slot}" for d in vm.devices) or "-"
        rows.append((vm.id, vm.status, _pid(vm.qemu), _pid(vm.monitor), vm.accel or "-",
                     str(vm.vcpus or "-"), f"{vm.memory_mib}M" if vm.memory_mib else "-",
                     devices, ",".join(vm.members) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _pid(proc: ProcessInfo | None) -> str:
    if proc is None:
        return "-"
    return str(proc.pid) if proc.alive else f"{proc.pid}(dead)"


@command.command("qmp", help="run one QMP command through the VM's monitor and print QEMU's answer "
                 "(JSON; a text answer such as human-monitor-command's as text); " + SANDBOX_HELP)
@click.argument("sandbox")
@click.argument("qmp_command", metavar="CMD")
@click.argument("arguments", metavar="[ARGS-JSON]", required=False)
@click.pass_obj
def qmp(ctx: Context, sandbox: str, qmp_command: str, arguments: str | None) -> None:
    from vmrt.errors import InvalidArgumentError
    from vmrt.runtime.debug import qmp as run_qmp

    _bind_sandbox(sandbox)
    args: Any = None
    if arguments is not None:
        try:
            args = json.loads(arguments)
        except ValueError as exc:
            raise InvalidArgumentError(f"ARGS-JSON is not JSON: {exc}") from exc
        if not isinstance(args, dict):
            raise InvalidArgumentError("ARGS-JSON must be a JSON object")
    result = run_qmp(ctx, sandbox, qmp_command, args)
    if isinstance(result, str):  # human-monitor-command's text is for people, not for JSON
        click.echo(result.replace("\r\n", "\n"), nl=not result.endswith("\n"))
    else:
        click.echo(json.dumps(result, indent=2))


@command.command("logs", help="print a pod VM's logs: guest console, agent, QEMU, monitor, "
                 "virtiofsd; " + SANDBOX_HELP)
@click.option("-s", "--source", "sources", multiple=True,
              type=click.Choice(["console", "agent", "qemu", "monitor", "virtiofsd"]),
              help="only these logs (repeatable; default: all but agent, which is in console)")
@click.option("-n", "--tail", type=int, default=None, help="only the last N lines of each log")
@click.option("-f", "--follow", is_flag=True, help="then print new lines as they come, until the VM "
              "is deleted or you interrupt")
@click.argument("sandbox")
@click.pass_obj
def logs(ctx: Context, sources: tuple[str, ...], tail: int | None, follow: bool, sandbox: str) -> None:
    from vmrt.runtime.debug import follow_logs, read_logs

    _bind_sandbox(sandbox)
    chosen = sources or ("console", "qemu", "monitor", "virtiofsd")
    logs = read_logs(ctx, sandbox, chosen, tail)
    for log in logs:
        if len(chosen) > 1:
            click.echo(f"==> {log.source}: {log.path} <==")
        click.echo(log.text, nl=bool(log.text) and not log.text.endswith("\n"))
    if follow:
        try:
            for source, line in follow_logs(ctx, sandbox, {log.source: log.end for log in logs}):
                click.echo(f"{source}: {line}" if len(chosen) > 1 else line)
        except KeyboardInterrupt:
            pass


@command.command("console", help="an interactive shell in the guest, outside the containers, through "
                 "the agent (only with debug_console = true in the config); " + SANDBOX_HELP)
@click.argument("sandbox")
@click.pass_obj
def console(ctx: Context, sandbox: str) -> None:
    from vmrt.runtime.debug import console as open_console

    _bind_sandbox(sandbox)
    sys.exit(open_console(ctx, sandbox, os.environ.get("TERM") or "vt100"))
