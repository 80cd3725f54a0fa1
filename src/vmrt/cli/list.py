from __future__ import annotations

import json

import click

from vmrt.runtime.context import Context


@click.command("list", help="lists containers started by vmrt with the given root")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("-q", "--quiet", is_flag=True, help="display only container IDs")
@click.pass_obj
def command(ctx: Context, fmt: str, quiet: bool) -> None:
    from vmrt.runtime.state import list_states

    states = list_states(ctx)
    if quiet:
        for s in states:
            click.echo(s["id"])
    elif fmt == "json":
        click.echo(json.dumps(states or None))  # runc prints null for no containers
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER", "POD")]
        rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"] or "root",
                  s.get("sandbox", s["id"])) for s in states]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            click.echo("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
