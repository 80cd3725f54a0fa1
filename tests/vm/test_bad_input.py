"""Bad input must fail cleanly: exit 1, one line on stderr, a {"level":"error"} JSON
line in --log, no container state and no process left behind.

Texts are runc 1.1.5's (tests/helpers/runc_texts.py): container managers match on them.
Where holding vmrt to runc's exact words makes no sense (Go's JSON decoder messages,
runc leaking a path into a "file name too long"), the tables below say so per runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import runc_texts as T
from helpers.procs import procs_mentioning
from helpers.rootfs import edit_config
from helpers.runtime import Runtime, assert_error, verb_failed

pytestmark = pytest.mark.vm

ANY = None  # "any one-line cause" in the tables below
ACCEPT = "accept"  # the runtime accepts the input (no error)


def expect_for(table: dict[str, str | None], runtime: Runtime) -> str | None:
    return table.get(runtime.name, table["*"])


def assert_nothing_left(runtime: Runtime) -> None:
    assert runtime.list_ids() == [], "a failed call left container state in --root"
    if runtime.is_vmrt:
        cdir = runtime.root / "containers"
        assert not cdir.is_dir() or not any(cdir.iterdir()), f"{cdir} not empty"
    assert procs_mentioning(str(runtime.root)) == [], "a failed call left processes"


# -- bundles that cannot be created ----------------------------------------------------------

@dataclass
class BadBundle:
    make: Callable[[Callable[..., Path], Path], Path]
    # cause after "<prog> create failed: ", per runtime ("*" = everyone else);
    # "{bundle}" is replaced by the bundle path; ANY = any non-empty one-line cause
    cause: dict[str, str | None] = field(default_factory=dict)
    # extra command-line flags ("{tmp}" is replaced by a scratch directory)
    flags: tuple[str, ...] = ()


def _missing_dir(bundle, tmp: Path) -> Path:
    return tmp / "no-such-bundle"


def _no_config(bundle, tmp: Path) -> Path:
    return bundle(["true"], with_config=False)


def _raw_config(text: str):
    def make(bundle, tmp: Path) -> Path:
        b = bundle(["true"])
        (b / "config.json").write_text(text)
        return b

    return make


def _truncated(bundle, tmp: Path) -> Path:
    b = bundle(["true"])
    full = (b / "config.json").read_text()
    (b / "config.json").write_text(full[: len(full) // 3])
    return b


def _edited(fn):
    def make(bundle, tmp: Path) -> Path:
        b = bundle(["true"])
        edit_config(b, fn)
        return b

    return make


def _del(key: str):
    return _edited(lambda spec: spec.pop(key))


def _set_rootfs(path: str):
    def fn(spec):
        spec["root"]["path"] = path

    return _edited(fn)


def _rootfs_symlink(bundle, tmp: Path) -> Path:
    b = bundle(["true"])
    (b / "rootfs").rename(b / "real-rootfs")
    (b / "rootfs").symlink_to("real-rootfs")
    return b


def _set_process(key: str, value):
    def fn(spec):
        spec["process"][key] = value

    return _edited(fn)


BAD_BUNDLES: dict[str, BadBundle] = {
    "missing-bundle-dir": BadBundle(_missing_dir, {"*": T.CHDIR_MISSING}),
    "no-config-json": BadBundle(_no_config, {"*": T.CONFIG_NOT_FOUND}),
    "garbage-json": BadBundle(_raw_config("not json at all"),
                              {"runc": T.JSON_GARBAGE, "*": ANY}),
    "truncated-json": BadBundle(_truncated, {"runc": T.JSON_TRUNCATED, "*": ANY}),
    "empty-config": BadBundle(_raw_config(""), {"runc": T.JSON_EMPTY, "*": ANY}),
    "json-array": BadBundle(
        _raw_config("[]"),
        {"runc": T.JSON_ARRAY, "*": ANY}),
    "args-not-a-list": BadBundle(
        _set_process("args", "sh"),
        {"runc": T.JSON_ARGS_STRING, "*": ANY}),
    "root-missing": BadBundle(_del("root"), {"*": T.ROOT_NOT_SPECIFIED}),
    "process-missing": BadBundle(_del("process"), {"*": T.PROCESS_EMPTY}),
    "process-null": BadBundle(_edited(lambda s: s.update(process=None)),
                              {"*": T.PROCESS_EMPTY}),
    "args-empty": BadBundle(_set_process("args", []), {"*": T.ARGS_EMPTY}),
    "cwd-relative": BadBundle(_set_process("cwd", "tmp"),
                              {"*": T.CWD_NOT_ABSOLUTE}),
    "rootfs-absent-absolute": BadBundle(
        _set_rootfs("/nonexistent/vmrt-test-rootfs"),
        {"*": T.INVALID_ROOTFS.format(rootfs="/nonexistent/vmrt-test-rootfs")}),
    "rootfs-absent-relative": BadBundle(
        _set_rootfs("no-such-rootfs"),
        {"*": T.INVALID_ROOTFS.format(rootfs="{bundle}/no-such-rootfs")}),
    # runc refuses a symlinked rootfs; vmrt may refuse it in its own words.
    "rootfs-symlink": BadBundle(
        _rootfs_symlink,
        {"runc": T.ROOTFS_SYMLINK, "*": ANY}),
    "terminal-without-console-socket": BadBundle(
        _set_process("terminal", True),
        {"*": T.TTY_WITHOUT_CONSOLE_SOCKET}),
    "console-socket-absent": BadBundle(
        _set_process("terminal", True),
        {"runc": T.CONSOLE_SOCKET_ABSENT.format(path="{tmp}/no-such.sock"), "*": ANY},
        flags=("--console-socket", "{tmp}/no-such.sock")),
    "env-without-equals": BadBundle(
        _set_process("env", ["PATH=/bin", "NOEQUALS"]),
        {"runc": T.ENV_INVALID.format(var="NOEQUALS"), "*": ANY}),
    # podman turns these two into exit codes 127 by matching the words: keep them.
    "exe-absent-absolute": BadBundle(
        _set_process("args", ["/nonexistent"]),
        {"*": T.EXEC_NOT_FOUND_ABS.format(exe="/nonexistent")}),
    "exe-not-in-path": BadBundle(
        _set_process("args", ["no-such-command"]),
        {"*": T.EXEC_NOT_IN_PATH.format(exe="no-such-command")}),
}


@pytest.mark.parametrize("verb", ["create", "run"])
@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_bad_bundle(runtime: Runtime, bundle, new_id, tmp_path: Path,
                    case: str, verb: str) -> None:
    spec = BAD_BUNDLES[case]
    b = spec.make(bundle, tmp_path)
    cause = expect_for(spec.cause, runtime)
    if cause is not None:
        cause = cause.replace("{bundle}", str(b)).replace("{tmp}", str(tmp_path))
    args = [verb, "--bundle", str(b)]
    args += [f.replace("{tmp}", str(tmp_path)) for f in spec.flags]
    if verb == "run":
        args.append("--detach")  # should it wrongly succeed, do not block on the program
    res = runtime.run(*args, new_id())
    assert_error(res, verb_failed(runtime.name, verb, cause))
    assert_nothing_left(runtime)


# -- ids ---------------------------------------------------------------------------------------

BAD_IDS: dict[str, tuple[str, str]] = {
    # name: (id, runc's text)
    "slash": ("a/b", T.INVALID_ID_FORMAT),
    "parent-escape": ("../escape", T.INVALID_ID_FORMAT),
    "dotdot": ("..", T.INVALID_ID_FORMAT),
    "dot": (".", T.INVALID_ID_FORMAT),
    "empty": ("", T.EMPTY_ID),
    "newline": ("a\nb", T.INVALID_ID_FORMAT),
    "space": ("a b", T.INVALID_ID_FORMAT),
    "colon": ("a:b", T.INVALID_ID_FORMAT),
    "non-ascii": ("\u00fc", T.INVALID_ID_FORMAT),
}


@pytest.mark.parametrize("case", list(BAD_IDS))
def test_create_rejects_bad_id(runtime: Runtime, bundle, case: str) -> None:
    cid, text = BAD_IDS[case]
    res = runtime.run("create", "--bundle", str(bundle(["sleep", "1000"])), cid)
    assert_error(res, verb_failed(runtime.name, "create", text))
    assert_nothing_left(runtime)
    # nothing was written outside --root either (a "../escape" directory, say)
    assert not (runtime.root.parent / "escape").exists()


@pytest.mark.parametrize("verb", [("state",), ("start",), ("kill",), ("kill", "KILL"),
                                  ("delete",), ("delete", "--force")],
                         ids=lambda v: "-".join(v))
@pytest.mark.parametrize("case", ["slash", "dotdot", "empty", "newline"])
def test_verbs_reject_bad_id(runtime: Runtime, verb: tuple[str, ...], case: str) -> None:
    cid, text = BAD_IDS[case]
    args = [verb[0], cid, *verb[1:]] if verb[0] == "kill" else [*verb, cid]
    assert_error(runtime.run(*args), text)
    assert_nothing_left(runtime)


@pytest.mark.parametrize("verb", [("state",), ("start",), ("kill",), ("kill", "KILL"),
                                  ("delete",)],
                         ids=lambda v: "-".join(v))
def test_verbs_on_unknown_id(runtime: Runtime, verb: tuple[str, ...]) -> None:
    args = [verb[0], "no-such-container", *verb[1:]]
    assert_error(runtime.run(*args), T.CONTAINER_NOT_EXIST)
    assert_nothing_left(runtime)


def test_long_id(runtime: Runtime, bundle) -> None:
    """300 characters cannot be a directory name. runc fails with a leaked lstat path;
    any runtime must fail with one clean line and leave nothing."""
    cid = "a" * 300
    res = runtime.run("create", "--bundle", str(bundle(["sleep", "1000"])), cid)
    if runtime.name == "runc":
        expected = re.compile(T.ID_TOO_LONG_RE)
    else:
        expected = verb_failed(runtime.name, "create", None)
    assert_error(res, expected)
    assert_nothing_left(runtime)


def test_duplicate_id(runtime: Runtime, bundle, new_id, tmp_path: Path) -> None:
    cid = new_id()
    first = bundle(["sleep", "1000"], name="first")
    runtime.ok("create", "--bundle", str(first), "--pid-file", str(tmp_path / "pid1"), cid)
    before = runtime.state(cid)

    second = bundle(["sleep", "1000"], name="second")
    res = runtime.run("create", "--bundle", str(second),
                      "--pid-file", str(tmp_path / "pid2"), cid)
    assert_error(res, verb_failed(runtime.name, "create", T.ALREADY_EXISTS))
    assert not (tmp_path / "pid2").exists(), "a failed create wrote its --pid-file"

    after = runtime.state(cid)
    assert after == before, "the failed create disturbed the existing container"
    assert after["bundle"] == str(first)
    assert runtime.list_ids() == [cid]
    runtime.ok("delete", "--force", cid)
    assert_nothing_left(runtime)


# -- what runc accepts: per-runtime expectations ---------------------------------------------

LENIENT: dict[str, tuple[Callable[[dict], None] | None, str, dict[str, str | None]]] = {
    # name: (edit to the spec or None, container id, expectation per runtime)
    # runc does not require ociVersion; podman and CRI-O always set it; be as lenient.
    "no-ociVersion": (lambda s: s.pop("ociVersion"), "ok-id", {"*": ACCEPT}),
    # runc ignores ociVersion; vmrt refuses a version whose meaning it cannot know.
    "unknown-ociVersion": (lambda s: s.update(ociVersion="2.0.0"), "ok-id",
                           {"runc": ACCEPT, "*": "config.json: unsupported ociVersion '2.0.0'"}),
    "garbage-ociVersion": (lambda s: s.update(ociVersion="latest"), "ok-id",
                           {"runc": ACCEPT, "*": "config.json: unsupported ociVersion 'latest'"}),
    # runc's id rule is ^[\w+\-.]+$ minus "." and "..": these odd ones pass.
    "id-dot-prefix": (None, ".hidden", {"*": ACCEPT}),
    "id-three-dots": (None, "...", {"*": ACCEPT}),
    "id-plus-dash": (None, "a+b-c_d.e", {"*": ACCEPT}),
    # unknown fields are for forward compatibility (the spec says: ignore them)
    "unknown-fields": (lambda s: s.update(vmrtTestUnknown={"a": 1}), "ok-id", {"*": ACCEPT}),
    # the spec requires absolute mount destinations; runc still takes relative ones
    # (relative to the rootfs) and so must a runc replacement.
    "relative-mount-destination": (
        lambda s: s["mounts"].append(
            {"destination": "relative/dir", "type": "tmpfs", "source": "tmpfs"}),
        "ok-id", {"*": ACCEPT}),
}


@pytest.mark.parametrize("case", list(LENIENT))
def test_lenient_input(runtime: Runtime, bundle, case: str) -> None:
    edit, cid, table = LENIENT[case]
    b = bundle(["sleep", "1000"])
    if edit is not None:
        edit_config(b, edit)
    expect = expect_for(table, runtime)
    res = runtime.run("create", "--bundle", str(b), cid)
    if expect == ACCEPT:
        assert res.returncode == 0, res
        assert runtime.list_ids() == [cid]
        assert runtime.state(cid)["status"] == "created"
        runtime.ok("delete", "--force", cid)
    else:
        assert_error(res, verb_failed(runtime.name, "create", expect))
    assert_nothing_left(runtime)


def test_log_is_json_lines(runtime: Runtime) -> None:
    """Every line the runtime writes to --log with --log-format json parses as JSON and
    carries level/msg (podman and containerd's shim parse this file)."""
    runtime.run("state", "no-such-container")
    runtime.run("kill", "a/b", "KILL")
    lines = [ln for ln in runtime.log.read_text().splitlines() if ln.strip()]
    assert len(lines) >= 2
    for ln in lines:
        entry = json.loads(ln)
        assert isinstance(entry, dict) and "level" in entry and "msg" in entry, ln


# -- a disk too full to hold the state ----------------------------------------------------

@pytest.mark.parametrize("free_kib", [0, 8, 16])
def test_disk_full(runtime: Runtime, bundle, new_id, free_kib: int) -> None:
    """--root on a tmpfs left with `free_kib` KiB: create fails with one line that names
    the cause, at whichever write runs out, and leaves nothing (or, given room enough,
    succeeds whole). Never a hang: a monitor that cannot log must still answer."""
    rt = runtime
    rt.root.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "vmrt-test-full",
                    str(rt.root)], check=True)
    try:
        rt.ok("list")  # runc and vmrt make their directories in --root
        filler = rt.root / "filler"
        with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
            while f.write(b"\0" * 4096):
                pass
        os.truncate(filler, max(0, filler.stat().st_size - free_kib * 1024))
        cid = new_id()
        res = rt.run("create", "--bundle", str(bundle(["sleep", "1000"])), cid)
        if res.returncode == 0 and free_kib:
            assert rt.state(cid)["status"] == "created"
            rt.ok("delete", "--force", cid)
        else:
            line = assert_error(res, verb_failed(rt.name, "create", None))
            if rt.is_vmrt:  # runc 1.1.5 loses it: "unable to store init state: %!w(<nil>)"
                assert "no space left on device" in line.lower(), line
        assert_nothing_left(rt)
        if rt.is_vmrt:
            assert not any((rt.root / "sandboxes").iterdir()), "a sandbox was left"
    finally:
        subprocess.run(["umount", "--lazy", str(rt.root)], check=False)
