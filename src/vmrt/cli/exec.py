from __future__ import annotations

import sys

import click

from vmrt.runtime.context import Context


@click.command("exec", help="execute new process inside the container",
               context_settings={"ignore_unknown_options": True,
                                 "allow_interspersed_args": False})
@click.option("--console-socket", default=None, help="unix socket to send the pty master to")
@click.option("--cwd", default=None, help="current working directory in the container")
@click.option("-e", "--env", multiple=True, help="set environment variables")
@click.option("-t", "--tty", is_flag=True, help="allocate a pseudo-TTY")
@click.option("-u", "--user", default=None, help="UID (format: <uid>[:<gid>])")
@click.option("-g", "--additional-gids", multiple=True, type=int, help="additional gids")
@click.option("-p", "--process", "process_file", default=None, help="path to process.json")
@click.option("-d", "--detach", is_flag=True, help="detach from the container's process")
@click.option("--pid-file", default=None, help="file to write the process id to")
@click.option("--process-label", default=None, hidden=True)
@click.option("--apparmor", default=None, hidden=True)
@click.option("--no-new-privs", is_flag=True, help="set the no new privileges value")
@click.option("-c", "--cap", "caps", multiple=True, help="add a capability to the bounding set")
@click.option("--preserve-fds", type=int, default=0, hidden=True)
@click.option("--cgroup", default=None, hidden=True)
@click.option("--ignore-paused", is_flag=True, hidden=True)
@click.argument("container_id")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def command(ctx: Context, console_socket: str | None, cwd: str | None, env: tuple[str, ...],
            tty: bool, user: str | None, additional_gids: tuple[int, ...],
            process_file: str | None, detach: bool, pid_file: str | None,
            process_label: str | None, apparmor: str | None, no_new_privs: bool,
            caps: tuple[str, ...], preserve_fds: int, cgroup: str | None, ignore_paused: bool,
            container_id: str, command: tuple[str, ...]) -> None:
    from vmrt.errors import VmrtError
    from vmrt.runtime.exec import ExecOptions, exec_process

    try:
        code = exec_process(ctx, ExecOptions(
            id=container_id, args=command, process_file=process_file, detach=detach,
            pid_file=pid_file, console_socket=console_socket, tty=tty, env=env, cwd=cwd,
            user=user, additional_gids=additional_gids, caps=caps, no_new_privs=no_new_privs))
    except VmrtError as exc:
        # runc: "exec failed: <cause>", exit 255 (conmon tells it from the process's own codes)
        exc.args = (f"exec failed: {exc}",)
        exc.exit_code = 255
        raise
    sys.exit(code)
