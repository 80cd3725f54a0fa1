from __future__ import annotations

import json

import click

from vmrt.runtime.context import Context


@click.group("config", help="inspect vmrt's own configuration")
def command() -> None:
    pass


@command.command("show", help="print the effective configuration and where each value came from")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json", "toml"]), default="table",
              help="toml prints a config file that reproduces this configuration")
@click.pass_obj
def show(ctx: Context, fmt: str) -> None:
    from vmrt.runtime.config_show import effective, toml_value

    eff = effective(ctx)
    if fmt == "json":
        click.echo(json.dumps({
            "file": eff.file, "file_exists": eff.file_exists,
            "settings": {s.key: {"value": s.value, "default": s.default, "source": s.source}
                         for s in eff.settings}}, indent=2))
        return
    state = "read" if eff.file_exists else "not present: built-in defaults"
    if fmt == "toml":
        click.echo(f"# vmrt configuration; file {eff.file} ({state})")
        for s in eff.settings:
            note = f"; empty means {s.note}" if s.note else ""
            click.echo(f"{s.key} = {toml_value(s.value)}  # {s.source}{note}")
        return
    click.echo(f"config file: {eff.file} ({state})")
    rows = [("KEY", "VALUE", "SOURCE")]
    rows += [(s.key, toml_value(s.value) + (f" ({s.note})" if s.note else ""), s.source)
             for s in eff.settings]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for key, value, source in rows:
        click.echo(f"{key.ljust(widths[0])}   {value.ljust(widths[1])}   {source}")
