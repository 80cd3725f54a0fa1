"""The console script's fast path (vmrt.entry) behaves exactly as the click CLI.

Each command line runs twice, through `vmrt.entry.main` (the console script)
and through `vmrt.cli.main` (click only), against the same --root: stdout,
stderr, exit status and the --log records must be the same. Command lines the
fast path must not take (help, unknown flags, wrong arity) are checked to fall
through to click.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vmrt.entry import parse
from vmrt.paths import Root
from vmrt.state.model import ContainerState, Status
from vmrt.state.store import Store

CLICK = "import sys; from vmrt.cli import main; sys.argv[0] = 'vmrt'; main()"
FAST = "import sys; from vmrt.entry import main; sys.argv[0] = 'vmrt'; main()"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    store = Store(Root.at(str(root)))
    for cid, bundle in (("alpha", "/b/alpha"), ("beta", "/b/beta")):
        store.reserve_container(cid)
        store.save_container(ContainerState(
            id=cid, bundle=bundle, sandbox="alpha", role="container", status=Status.CREATED,
            created="2024-01-01T00:00:00.000000000Z", annotations={"k": "v"}))
    return root


def _run(code: str, argv: list[str], log: Path) -> tuple[int, str, str, list[dict[str, object]]]:
    log.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=60)
    records = []
    if log.exists():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            rec.pop("time", None)
            records.append(rec)
    return proc.returncode, proc.stdout, proc.stderr, records


ARGVS = [
    ["state", "alpha"],
    ["state", "nope"],
    ["state", "../x"],
    ["list"],
    ["list", "-q"],
    ["list", "--format", "json"],
    ["list", "--format=json"],
    ["list", "-f", "table", "--quiet"],
    ["start", "alpha"],  # stopped: cannot start
    ["start", "nope"],
    ["kill", "nope"],
    ["kill", "alpha", "KILL"],
    ["kill", "--all", "alpha", "9"],
    ["kill", "alpha", "NOSUCHSIG"],
    ["--version"],
    ["-v"],
    # create, up to where it would boot a VM: errors only
    ["create", "--bundle", "/nonexistent", "c1"],
    ["create", "-b", "/nonexistent", "--pid-file", "/tmp/p", "c1"],
    ["create", "--bundle=/nonexistent", "--no-pivot", "--no-new-keyring", "c1"],
    ["create", "c1", "--console-socket", "/nonexistent.sock", "--preserve-fds", "0"],
    ["create", "--bundle", "/nonexistent", "alpha"],  # the id is taken
    ["create", "--bundle", "/nonexistent", "a/b"],
]


@pytest.mark.parametrize("argv", ARGVS, ids=" ".join)
def test_fast_path_matches_click(root: Path, tmp_path: Path, argv: list[str]) -> None:
    log = tmp_path / "log.json"
    full = ["--root", str(root), "--log", str(log), "--log-format", "json", "--debug", *argv]
    assert parse(full) is not None, "this command line should take the fast path"
    assert _run(FAST, full, log) == _run(CLICK, full, log)


def test_empty_list_matches_click(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    for argv in (["list"], ["list", "-f", "json"], ["list", "-q"]):
        full = [f"--root={tmp_path / 'empty'}", *argv]
        assert _run(FAST, full, log) == _run(CLICK, full, log)


@pytest.mark.parametrize("argv", [
    [], ["--help"], ["state"], ["state", "a", "b"], ["state", "--help"], ["state", "-x", "a"],
    ["list", "-f", "yaml"], ["list", "--bogus"], ["kill"], ["kill", "a", "b", "c"],
    ["kill", "a", "-9"], ["start", "a", "b"], ["--root"], ["--bogus", "state", "a"],
    ["--log-format", "xml", "state", "a"], ["--root", "--debug", "state", "a"],
    ["delete", "a"], ["--", "state", "a"], ["create"], ["create", "a", "b"], ["create", "-bx", "a"],
    ["create", "--bundle", "a"], ["create", "--preserve-fds", "x", "a"], ["create", "--help"],
    ["create", "--pid-file", "--no-pivot", "a"], ["create", "--detach", "a"],
], ids=lambda a: " ".join(a) or "(none)")
def test_everything_else_goes_to_click(argv: list[str]) -> None:
    assert parse(argv) is None


@pytest.mark.parametrize("argv", [["state"], ["list", "-f", "yaml"], ["kill"], ["--help"],
                                  ["state", "--help"]], ids=" ".join)
def test_fallback_output_is_clicks(tmp_path: Path, argv: list[str]) -> None:
    log = tmp_path / "log.json"
    full = ["--root", str(tmp_path / "r"), *argv]
    fast, slow = _run(FAST, full, log), _run(CLICK, full, log)
    assert fast == slow
    assert fast[0] != 0 or "Usage" in fast[1]
