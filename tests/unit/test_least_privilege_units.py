"""Least privilege, checked in the source and in the argv vmrt builds.

* No shell anywhere: no `shell=True`, `os.system`, `os.popen`, `getoutput` in src/ or
  guest-agent/ (found by parsing, not grepping comments), and ruff keeps banning them.
* Every value that lands in a QEMU option string is escaped: a comma in any path or
  name given to the argv builder cannot start an option of its own. The same for
  virtiofsd's `-o source=`.
* QEMU runs under its seccomp sandbox unless configured otherwise.
(The agent refuses paths outside the container's share: tests/unit/test_agent_*.py.)
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

from vmrt.config import Config
from vmrt.monitor.shares import fuse_opt
from vmrt.util.record import fields, replace
from vmrt.vm import cmdline

REPO = Path(__file__).resolve().parents[2]
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
               ("subprocess", "getstatusoutput"), ("os", "execl"), ("os", "spawnl")}
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def _sources() -> list[Path]:
    return sorted([*(REPO / "src").rglob("*.py"), *(REPO / "guest-agent").rglob("*.py")])


def _shell_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                          and kw.value.value is False):
                found.append(f"{path}:{node.lineno}: shell={ast.unparse(kw.value)}")
        func = node.func
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and (func.value.id, func.attr) in SHELL_CALLS):
            found.append(f"{path}:{node.lineno}: {func.value.id}.{func.attr}")
    return found


def test_no_shell_anywhere() -> None:
    sources = _sources()
    assert len(sources) > 40, "the source tree was not found"
    found = [use for path in sources for use in _shell_uses(path)]
    assert found == []


def test_the_scan_would_find_a_shell(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os, subprocess\nos.system('x')\nsubprocess.run('x', shell=True)\n")
    assert len(_shell_uses(bad)) == 2


def test_ruff_keeps_banning_the_shell() -> None:
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]
    lint = conf["lint"]
    assert "S" in lint["select"]
    # S602 shell=True, S604 shell in any call, S605 os.system & co, S609 wildcards
    assert not {"S602", "S604", "S605", "S609"} & set(lint["ignore"])
    banned = lint["flake8-tidy-imports"]["banned-api"]
    assert {"os.system", "subprocess.getoutput", "subprocess.getstatusoutput"} <= set(banned)


# --- QEMU's option strings -------------------------------------------------------------

BASE = cmdline.VMSpec(
    name="pod1", qemu="/usr/bin/qemu-system-x86_64", accel="tcg", machine="q35", vcpus=1,
    memory_mib=512, kernel="/k/vmlinux", initrd="/k/initrd.img",
    kernel_cmdline=("console=ttyS0",), qmp_fd=5, agent_fd=6,
    console_log="/run/vmrt/sandboxes/pod1/console.log", hotplug_slots=2,
    root_image="/k/root.erofs")
OPTION_FLAGS = ("-name", "-machine", "-object", "-chardev", "-device", "-drive", "-accel",
                "-sandbox")
PLAIN_FLAGS = ("-kernel", "-initrd")  # QEMU takes these verbatim: escaping would break them
EVIL = ",evil=on,,x"


def qemu_keys(value: str) -> list[str]:
    """The keys QEMU's option parser sees in `value` (a doubled comma is a literal)."""
    parts = re.split(r"(?<!,),(?!,)", value.replace(",,", "\0"))
    return [p.split("=", 1)[0] for p in parts[1:]] + ([parts[0].split("=", 1)[0]]
                                                      if "=" in parts[0] else [])


def _options(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in OPTION_FLAGS]


@pytest.mark.parametrize(("field", "flag"), [("kernel", "-kernel"), ("initrd", "-initrd"),
                                             ("firmware", "-bios")])
def test_plain_paths_are_passed_verbatim(field: str, flag: str) -> None:
    """`-kernel '/a,,b'` makes QEMU open "/a,,b" (measured with QEMU 7.2); -bios likewise."""
    base = replace(BASE, root_image="")
    argv = cmdline.build(replace(base, **{field: "/tmp/a,b/f"}))
    assert argv[argv.index(flag) + 1] == "/tmp/a,b/f"


@pytest.mark.parametrize("field", [f.name for f in fields(cmdline.VMSpec)
                                   if f.type == "str"
                                   and f.name not in ("qemu", "accel", "kernel", "initrd",
                                                      "firmware")])
def test_no_value_can_add_a_qemu_option(field: str) -> None:
    argv = cmdline.build(replace(BASE, **{field: getattr(BASE, field) + EVIL}))
    for value in _options(argv):
        assert "evil" not in qemu_keys(value), f"{field} injected an option: {value!r}"
    assert any(EVIL.replace(",", ",,") in v for v in argv), f"{field} is not in {argv}"


def test_qemu_keys_parser_sees_an_injection() -> None:
    assert "evil" in qemu_keys("file,id=c,path=/a,evil=on")
    assert "evil" not in qemu_keys("file,id=c,path=/a,,evil=on")


def test_qemu_is_sandboxed_by_default() -> None:
    assert Config().sandbox_qemu is True
    argv = cmdline.build(BASE)
    assert argv[argv.index("-sandbox") + 1] == SANDBOX


def test_virtiofsd_source_cannot_add_options() -> None:
    """libfuse's option parser: a backslash escapes the next character."""
    value = "source=" + fuse_opt("/tmp/r,allow_root\\,x/sandboxes/s/shares/c")
    parts, cur, i = [], "", 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            cur += value[i + 1]
            i += 2
            continue
        if value[i] == ",":
            parts.append(cur)
            cur = ""
        else:
            cur += value[i]
        i += 1
    parts.append(cur)
    assert parts == ["source=/tmp/r,allow_root\\,x/sandboxes/s/shares/c"]
