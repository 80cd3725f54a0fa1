"""vmrt's command line: runc's global flags and verbs, one module per verb, loaded lazily.

main() owns the error policy, as runc's fatal() does: one line on stderr, the
same as an error record in --log (JSON with --log-format json), exit 1.
Nothing is printed on success: stdout and stderr may be a container's log pipes.
"""

from __future__ import annotations

import copy
import importlib
import sys
from typing import Any

import click

from vmrt import OCI_VERSION, __version__

VERBS = {
    "create": "vmrt.cli.create",
    "exec": "vmrt.cli.exec",
    "start": "vmrt.cli.start",
    "state": "vmrt.cli.state",
    "kill": "vmrt.cli.kill",
    "delete": "vmrt.cli.delete",
    "run": "vmrt.cli.run",
    "list": "vmrt.cli.list",
    "check": "vmrt.cli.check",
    "image": "vmrt.cli.image",
    "gc": "vmrt.cli.gc",
    "pool": "vmrt.cli.pool",
    "config": "vmrt.cli.config",
    "debug": "vmrt.cli.debug",
    "ps": "vmrt.cli.ps",
    "pause": "vmrt.cli.pause",
    "resume": "vmrt.cli.resume",
    "events": "vmrt.cli.events",
    "update": "vmrt.cli.update",
    "features": "vmrt.cli.features",
    "spec": "vmrt.cli.spec",
    "checkpoint": "vmrt.cli.checkpoint",
    "restore": "vmrt.cli.restore",
}


class LazyGroup(click.Group):
    """Import a verb's module only when it runs: `vmrt state` must not pay for `create`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(VERBS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = VERBS.get(name)
        if module is None:
            return None
        cmd: click.Command = importlib.import_module(module).command
        return _naming_container(cmd)


def _naming_container(cmd: click.Command) -> click.Command:
    """A copy of `cmd` whose --log records carry the container it acts on.

    Many containers' calls share one log file (containerd's shim, a user's
    --log), so each record says which container it is about; every verb
    that takes a container names its argument `container_id`.
    """
    inner = cmd.callback
    if inner is None or not any(p.name == "container_id" for p in cmd.params):
        return cmd

    def callback(*args: Any, **kwargs: Any) -> Any:
        from vmrt import log

        logger = log.get()
        logger.context["container"] = str(kwargs["container_id"])
        logger.debug(f"vmrt {cmd.name}")
        return inner(*args, **kwargs)

    named = copy.copy(cmd)
    named.callback = callback
    return named


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "-v", "--version",
    message=f"vmrt version %(version)s\nspec: {OCI_VERSION}")
@click.option("--root", default="/run/vmrt", show_default=True,
              help="root directory for storage of container state")
@click.option("--log", "log_path", default=None, help="set the log file to write logs to")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option("--debug", is_flag=True, help="enable debug logging")
@click.option("--systemd-cgroup", is_flag=True, help="accepted for runc compatibility")
@click.option("--rootless", default="auto", hidden=True)
@click.option("--config", "config_path", default=None, envvar="VMRT_CONFIG",
              help="vmrt configuration file (default /etc/vmrt/config.toml)")
@click.pass_context
def cli(ctx: click.Context, root: str, log_path: str | None, log_format: str, debug: bool,
        systemd_cgroup: bool, rootless: str, config_path: str | None) -> None:
    from vmrt import log
    from vmrt.paths import Root
    from vmrt.runtime.context import Context

    log.setup(log_path, log_format, debug)
    ctx.obj = Context(Root.at(root), config_path)


def main(argv: list[str] | None = None) -> Any:
    from vmrt.errors import VmrtError

    try:
        return cli.main(args=argv, prog_name="vmrt", standalone_mode=False)
    except VmrtError as exc:
        _fatal(str(exc), exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        _fatal("aborted", 1)
    except click.ClickException as exc:
        _fatal(exc.format_message(), exc.exit_code)
    except OSError as exc:
        _fatal(str(exc), 1)


def _fatal(message: str, code: int) -> None:
    from vmrt import log

    message = " ".join(message.split())  # one line, whatever the cause said
    log.get().error(message)
    sys.stderr.write(message + "\n")
    sys.exit(code)


def failed(verb: str) -> Any:
    """runc prefixes create/run errors with "<prog> <verb> failed: "; so do we."""
    import contextlib

    from vmrt.errors import VmrtError

    @contextlib.contextmanager
    def wrap() -> Any:
        try:
            yield
        except VmrtError as exc:
            exc.args = (f"vmrt {verb} failed: {exc}",)
            raise

    return wrap()
