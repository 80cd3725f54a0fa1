"""docs/configuration.md names exactly the keys of `Config`, with their real defaults,
and `vmrt config show` reports every value with where it came from."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from vmrt.config import Config
from vmrt.util.record import fields

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "configuration.md"
VMRT = str(Path(sys.executable).parent / "vmrt")


def doc_table() -> dict[str, object]:
    """{key: default} from the `| key | default | meaning |` table; defaults are TOML values."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\|\s*key\s*\|\s*default\s*\|", line))
    table: dict[str, object] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key = re.fullmatch(r"`([a-z_]+)`", cells[0])
        default = re.fullmatch(r"`(.*)`", cells[1])
        assert key and default, f"row not in `key` | `toml value` form: {line!r}"
        assert key.group(1) not in table, f"{key.group(1)} listed twice"
        table[key.group(1)] = tomllib.loads(f"v = {default.group(1)}")["v"]
    return table


def config_defaults() -> dict[str, object]:
    d = Config()
    return {f.name: getattr(d, f.name) for f in fields(Config) if f.name != "source"}


def test_doc_lists_every_key_with_its_default() -> None:
    documented = doc_table()
    real = config_defaults()
    assert sorted(documented) == sorted(real), "docs/configuration.md and Config disagree on keys"
    for key, default in real.items():
        got = documented[key]
        # TOML's 30 and Python's 30.0 are one default; a bool is never a number.
        assert got == default and isinstance(got, bool) == isinstance(default, bool), \
            f"{key}: documented {got!r}, Config says {default!r}"


def test_doc_example_is_a_valid_config(tmp_path: Path) -> None:
    from vmrt.config import load

    text = DOC.read_text()
    examples = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert examples
    for i, example in enumerate(examples):
        path = tmp_path / f"ex{i}.toml"
        path.write_text(example)
        load(str(path))  # raises on unknown keys or wrong types


def show(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [VMRT, *(["--config", str(config)] if config else []), "config", "show", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                          env={"PATH": "/usr/bin:/bin", "VMRT_CACHE_DIR": "/nonexistent-cache"})


def test_show_defaults_without_a_file(tmp_path: Path) -> None:
    res = show("--format", "json", config=tmp_path / "absent.toml")
    assert res.returncode == 0, res
    data = json.loads(res.stdout)
    assert data["file"] == str(tmp_path / "absent.toml") and data["file_exists"] is False
    real = config_defaults()
    assert sorted(data["settings"]) == sorted(real)
    for key, value in real.items():
        assert data["settings"][key] == {"value": value, "default": value, "source": "default"}, key


def test_show_names_the_file_a_value_came_from(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('accel = "tcg"\nmemory_mib = 1024\nboot_timeout_s = 45\n')
    data = json.loads(show("--format", "json", config=cfg).stdout)["settings"]
    assert data["accel"] == {"value": "tcg", "default": "auto", "source": str(cfg)}
    assert data["memory_mib"]["value"] == 1024 and data["memory_mib"]["source"] == str(cfg)
    assert data["boot_timeout_s"]["value"] == 45.0 and data["boot_timeout_s"]["source"] == str(cfg)
    assert data["vcpus"]["source"] == "default"

    table = show(config=cfg)
    assert table.returncode == 0, table
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[2:]}
    assert rows["accel"] == ["accel", '"tcg"', str(cfg)]
    assert rows["vcpus"] == ["vcpus", "1", "default"]
    assert "(read)" in table.stdout.splitlines()[0]


def test_show_toml_reproduces_the_configuration(tmp_path: Path) -> None:
    from vmrt.config import load

    cfg = tmp_path / "config.toml"
    cfg.write_text('vcpus = 2\ndebug_console = true\nqemu = "/opt/q \\"x\\""\n')
    res = show("--format", "toml", config=cfg)
    assert res.returncode == 0, res
    again = tmp_path / "again.toml"
    again.write_text(res.stdout)
    assert load(str(again)) == load(str(cfg))  # `source` is not compared


def test_show_reports_a_bad_file_as_runc_reports_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("no_such_key = 1\n")
    res = show(config=cfg)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr == f"config {cfg}: unknown key 'no_such_key'\n"


@pytest.mark.parametrize("verb", ["config", "debug"])
def test_new_verbs_are_not_imported_by_state(verb: str) -> None:
    """`vmrt state` pays only for itself: LazyGroup must not load the debugging verbs."""
    code = ("import sys; from vmrt.cli import main\n"
            "try:\n    main(['--root', '/nonexistent-root', 'state', 'x'])\n"
            "except SystemExit:\n    pass\n"
            f"assert 'vmrt.cli.{verb}' not in sys.modules\n"
            "assert 'vmrt.runtime.debug' not in sys.modules and 'vmrt.cli.progress' not in sys.modules")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         check=False)
    assert res.returncode == 0, res.stderr
