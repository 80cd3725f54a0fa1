"""The `vmrt` console script: the hot verbs without click, everything else through it.

Container managers call `state` far more than any other verb (CRI-O and
containerd poll it), then `list`, `kill`, `start` and `create` (whose
process, forked, is also the container's shim: without click it is smaller). Importing click and
building the command group costs ≈25 ms here, more than the interpreter's
own start (≈10 ms). So `main` recognizes exactly the command lines these verbs
take — runc's global flags, then the verb and its own arguments — and runs
them directly; any other command line (help, an unknown or misspelled flag,
a missing argument, any other verb) goes to click unchanged, so every help
text and usage error is click's. The work and the error policy are the same
on both paths: the library call and `vmrt.cli.main`'s one line on stderr,
mirrored in --log, exit 1.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing costs ≈3 ms of a ≈30 ms call
if TYPE_CHECKING:
    from typing import Any, NoReturn

_VALUED = {"--root": "root", "--log": "log", "--log-format": "log_format",
           "--rootless": "rootless", "--config": "config"}
_FLAGS = {"--debug": "debug", "--systemd-cgroup": "systemd_cgroup"}


class Call:
    """A parsed fast-path command line (a plain class: a dataclass costs import time here)."""

    def __init__(self, verb: str, globals_: dict[str, Any]) -> None:
        self.verb = verb
        self.globals = globals_
        self.args: list[str] = []
        self.options: dict[str, Any] = {}


def parse(argv: list[str]) -> Call | None:
    """The call, if `argv` is one the fast path takes exactly as click would; else None."""
    opts: dict[str, Any] = {"root": "/run/vmrt", "log": None, "log_format": "text",
                            "debug": False, "config": os.environ.get("VMRT_CONFIG") or None}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, value = argv[i].partition("=")
        if name in _VALUED:
            if not eq:
                if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                    return None
                i += 1
                value = argv[i]
            opts[_VALUED[name]] = value
        elif name in _FLAGS and not eq:
            opts[_FLAGS[name]] = True
        elif argv[i] in ("-v", "--version"):
            return Call("--version", opts)  # click's version option is eager: it wins
        else:
            return None
        i += 1
    if opts["log_format"] not in ("text", "json") or i >= len(argv):
        return None
    verb, rest = argv[i], argv[i + 1:]
    call = Call(verb, opts)
    match verb:
        case "state" | "start":
            ok = len(rest) == 1 and _positional(rest[0])
            call.args = rest
        case "list":
            ok = _list_options(rest, call.options)
        case "create":
            ok = _create_options(rest, call)
        case "kill":
            call.options["all"] = False
            for arg in rest:
                if arg in ("-a", "--all"):
                    call.options["all"] = True
                elif _positional(arg):
                    call.args.append(arg)
                else:
                    return None
            ok = 1 <= len(call.args) <= 2
        case _:
            ok = False
    return call if ok else None


def _positional(arg: str) -> bool:
    return bool(arg) and not arg.startswith("-")


def _list_options(rest: list[str], options: dict[str, Any]) -> bool:
    options.update(fmt="table", quiet=False)
    i = 0
    while i < len(rest):
        arg = rest[i]
        name, eq, value = arg.partition("=")
        if arg in ("-q", "--quiet"):
            options["quiet"] = True
        elif arg in ("-f", "--format") or (name == "--format" and eq):
            if not eq:
                if i + 1 >= len(rest):
                    return False
                i += 1
                value = rest[i]
            if value not in ("table", "json"):
                return False
            options["fmt"] = value
        else:
            return False
        i += 1
    return True


_CREATE_VALUED = {"-b": "bundle", "--bundle": "bundle", "--pid-file": "pid_file",
                  "--console-socket": "console_socket", "--preserve-fds": "preserve_fds"}
_CREATE_FLAGS = {"--no-pivot": "no_pivot", "--no-new-keyring": "no_new_keyring"}


def _create_options(rest: list[str], call: Call) -> bool:
    """create's options, as cli/create.py declares them; one container id."""
    options = call.options
    options.update(bundle=".", pid_file=None, console_socket=None, no_pivot=False,
                   no_new_keyring=False)
    i = 0
    while i < len(rest):
        arg = rest[i]
        name, eq, value = arg.partition("=")
        if _positional(arg):
            call.args.append(arg)
        elif arg in _CREATE_VALUED:  # the value is the next argument
            if i + 1 >= len(rest) or rest[i + 1].startswith("-"):
                return False
            i += 1
            options[_CREATE_VALUED[arg]] = rest[i]
        elif eq and name.startswith("--") and name in _CREATE_VALUED:  # --name=value
            options[_CREATE_VALUED[name]] = value
        elif arg in _CREATE_FLAGS:
            options[_CREATE_FLAGS[arg]] = True
        else:
            return False
        i += 1
    fds = options.pop("preserve_fds", "0")
    return len(call.args) == 1 and str(fds).isdigit()


def main(argv: list[str] | None = None) -> Any:
    call = parse(sys.argv[1:] if argv is None else argv)
    if call is None:
        from vmrt.cli import main as click_main

        return click_main(argv)
    run(call)
    if argv is None:  # the console script: nothing is left for the interpreter to do
        _exit_now()
    return None


def _exit_now() -> NoReturn:
    """Exit without the interpreter's teardown: finalizing the modules costs ≈3 ms, on
    every call of the verbs managers poll. These verbs leave nothing to it: their files
    are written with os.write or closed by `with`, and stdout/stderr are flushed here."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe: what the interpreter's own flush at exit returns
        os._exit(120)
    os._exit(0)


def run(call: Call) -> None:
    if call.verb == "--version":
        from vmrt import OCI_VERSION, __version__

        sys.stdout.write(f"vmrt version {__version__}\nspec: {OCI_VERSION}\n")
        return
    from vmrt import log
    from vmrt.errors import VmrtError

    g = call.globals
    logger = log.setup(g["log"], g["log_format"], g["debug"])
    try:
        _run(call, logger)
    except VmrtError as exc:
        _fatal(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fatal("aborted", 1)
    except OSError as exc:
        _fatal(str(exc), 1)


def _run(call: Call, logger: Any) -> None:
    from vmrt.errors import VmrtError
    from vmrt.paths import Root
    from vmrt.runtime.context import Context

    ctx = Context(Root.at(call.globals["root"]), call.globals["config"])
    if call.args:  # every verb here but list takes a container, as vmrt.cli names it
        logger.context["container"] = call.args[0]
        logger.debug(f"vmrt {call.verb}")
    match call.verb:
        case "state":
            import json

            from vmrt.runtime.state import state

            sys.stdout.write(json.dumps(state(ctx, call.args[0]), indent=2) + "\n")
        case "list":
            from vmrt.runtime.state import list_states, render_list

            out = render_list(list_states(ctx), call.options["fmt"], call.options["quiet"])
            sys.stdout.write(out)
        case "start":
            from vmrt.runtime.start import start

            start(ctx, call.args[0])
        case "create":
            from vmrt.runtime.create import CreateOptions, create

            o = call.options
            try:
                create(ctx, CreateOptions(call.args[0], o["bundle"], o["pid_file"],
                                          o["console_socket"], o["no_pivot"],
                                          o["no_new_keyring"]))
            except VmrtError as exc:  # as vmrt.cli.failed("create")
                exc.args = (f"vmrt create failed: {exc}",)
                raise
        case "kill":
            from vmrt.runtime.kill import kill, parse_signal

            sig = call.args[1] if len(call.args) > 1 else "SIGTERM"
            kill(ctx, call.args[0], parse_signal(sig), all_processes=call.options["all"])


def _fatal(message: str, code: int) -> None:
    """vmrt.cli's error policy (see its `_fatal`), without importing click."""
    from vmrt import log

    message = " ".join(message.split())
    log.get().error(message)
    sys.stderr.write(message + "\n")
    sys.exit(code)
