"""The runtime under test: vmrt (default) or runc, chosen by $VMRT_TEST_RUNTIME.

`Runtime.run` never uses pipes for stdout/stderr: it redirects them to temporary files.
A container made by `create` or `run --detach` inherits the runtime's stdio and keeps it
open for as long as it lives; with pipes, `subprocess.run` would wait for that EOF.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import wait_until

ENV_RUNTIME = "VMRT_TEST_RUNTIME"
ENV_OP_TIMEOUT = "VMRT_TEST_OP_TIMEOUT"  # seconds per CLI call for slow runtimes (vmrt)


@dataclass(frozen=True)
class RuntimeSpec:
    """Which binary, and how patient to be with it."""

    name: str  # "vmrt" or "runc" (what expectation tables are keyed by)
    binary: str
    op_timeout: float  # one CLI call (create boots a VM for vmrt)
    exit_timeout: float  # a container's program to be seen exited

    @property
    def is_vmrt(self) -> bool:
        return self.name == "vmrt"


def resolve_runtime() -> RuntimeSpec:
    """`VMRT_TEST_RUNTIME` = `vmrt` (default: the venv's console script), `runc`, or an
    absolute path to a runc-compatible binary (named after its basename)."""
    choice = os.environ.get(ENV_RUNTIME, "vmrt").strip() or "vmrt"
    slow_op = float(os.environ.get(ENV_OP_TIMEOUT, "120"))
    if choice == "vmrt":
        binary = str(Path(sys.executable).parent / "vmrt")
        return RuntimeSpec("vmrt", binary, op_timeout=slow_op, exit_timeout=slow_op)
    if choice == "runc":
        binary = shutil.which("runc") or "/usr/sbin/runc"
        return RuntimeSpec("runc", binary, op_timeout=30.0, exit_timeout=20.0)
    if choice.startswith("/"):
        name = Path(choice).name
        slow = name not in ("runc", "crun")
        return RuntimeSpec(
            name,
            choice,
            op_timeout=slow_op if slow else 30.0,
            exit_timeout=slow_op if slow else 20.0,
        )
    raise ValueError(f"{ENV_RUNTIME}={choice!r}: expected vmrt, runc or an absolute path")


def run_to_files(
    argv: list[str],
    *,
    input: str | bytes | None = None,
    stdin: Any = None,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with stdout/stderr captured through temporary files, not pipes:
    a daemon or container that inherits them cannot make us wait for their EOF."""
    if input is None and stdin is None:
        stdin = subprocess.DEVNULL
    if isinstance(input, str):
        input = input.encode()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run(
            argv,
            input=input,
            stdin=stdin if input is None else None,
            stdout=out,
            stderr=err,
            timeout=timeout,
            env=env,
            cwd=cwd,
            check=False,
        )
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            argv, proc.returncode,
            out.read().decode(errors="replace"), err.read().decode(errors="replace"))


@dataclass
class Result:
    """A finished runtime call: like CompletedProcess, plus what it logged."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    log_lines: list[dict[str, Any]] = field(default_factory=list)
    log_raw: str = ""

    def check(self) -> Result:
        if self.returncode != 0:
            raise AssertionError(
                f"{' '.join(self.args)} exited {self.returncode}\n"
                f"stdout: {self.stdout!r}\nstderr: {self.stderr!r}\nlog: {self.log_raw!r}"
            )
        return self

    def __str__(self) -> str:
        return (
            f"[{self.returncode}] {' '.join(map(repr, self.args))}\n"
            f"  stdout={self.stdout!r}\n  stderr={self.stderr!r}\n  log={self.log_raw!r}"
        )


class Runtime:
    """One runtime binary bound to a private --root and --log."""

    def __init__(self, spec: RuntimeSpec, root: Path, log: Path) -> None:
        self.spec = spec
        self.root = root
        self.log = log

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def binary(self) -> str:
        return self.spec.binary

    @property
    def is_vmrt(self) -> bool:
        return self.spec.is_vmrt

    def global_args(self) -> list[str]:
        return ["--root", str(self.root), "--log", str(self.log), "--log-format", "json"]

    def argv(self, *args: str) -> list[str]:
        return [self.binary, *self.global_args(), *args]

    # -- calls ---------------------------------------------------------------------------

    def _log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, offset: int) -> tuple[str, list[dict[str, Any]]]:
        try:
            with self.log.open("rb") as f:
                f.seek(offset)
                raw = f.read().decode(errors="replace")
        except FileNotFoundError:
            return "", []
        parsed = []
        for line in raw.splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = {"_unparsed": line}
            parsed.append(obj if isinstance(obj, dict) else {"_unparsed": line})
        return raw, parsed

    def run(
        self,
        *args: str,
        input: str | bytes | None = None,
        stdin: Any = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> Result:
        """Run `<runtime> --root R --log L --log-format json *args` to completion."""
        argv = self.argv(*args)
        offset = self._log_size()
        proc = run_to_files(argv, input=input, stdin=stdin,
                            timeout=timeout or self.spec.op_timeout, env=env, cwd=cwd)
        raw, lines = self._log_since(offset)
        return Result(argv, proc.returncode, proc.stdout, proc.stderr, lines, raw)

    def ok(self, *args: str, **kw: Any) -> Result:
        return self.run(*args, **kw).check()

    # -- conveniences --------------------------------------------------------------------

    def state(self, cid: str) -> dict[str, Any]:
        res = self.ok("state", cid)
        try:
            data = json.loads(res.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(f"state {cid} printed no JSON: {res}") from e
        assert isinstance(data, dict), res
        return data

    def status(self, cid: str) -> str | None:
        """The status, or None once the container does not exist."""
        res = self.run("state", cid)
        if res.returncode != 0:
            return None
        return str(json.loads(res.stdout)["status"])

    def wait_status(self, cid: str, want: str, timeout: float | None = None) -> str | None:
        """Poll `state` until the status is `want`; returns the last status seen."""
        seen: list[str | None] = [None]

        def pred() -> bool:
            seen[0] = self.status(cid)
            return seen[0] == want

        wait_until(pred, timeout or self.spec.exit_timeout, interval=0.02)
        return seen[0]

    def list_ids(self) -> list[str]:
        res = self.ok("list", "-q")
        return [line for line in res.stdout.splitlines() if line.strip()]

    def force_delete_all(self) -> list[str]:
        ids = []
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            ids = self.list_ids()
        for cid in ids:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.run("delete", "--force", cid)
        return ids


# -- error-contract assertions ------------------------------------------------------------


def single_line(text: str) -> str:
    """The one line `text` consists of (newline-terminated, non-empty)."""
    assert text.endswith("\n"), f"stderr is not one newline-terminated line: {text!r}"
    body = text[:-1]
    assert body.strip(), f"stderr is empty: {text!r}"
    assert "\n" not in body, f"stderr has more than one line: {text!r}"
    return body


def assert_error(res: Result, expected: str | re.Pattern[str] | None, code: int = 1) -> str:
    """The runc error contract: exit `code`, nothing on stdout, exactly one line on
    stderr (== `expected` if a str, fullmatching it if a pattern), and the same message
    logged as {"level": "error", "msg": ...} in --log (json)."""
    assert res.returncode == code, f"expected exit {code}: {res}"
    assert res.stdout == "", f"expected nothing on stdout: {res}"
    line = single_line(res.stderr)
    if isinstance(expected, str):
        assert line == expected, f"stderr {line!r} != {expected!r}\n{res}"
    elif expected is not None:
        assert expected.fullmatch(line), f"stderr {line!r} !~ {expected.pattern!r}\n{res}"
    errors = [entry for entry in res.log_lines if entry.get("level") == "error"]
    assert errors, f"no {{'level': 'error'}} JSON line was logged to --log: {res}"
    msgs = [str(entry.get("msg", "")) for entry in errors]
    assert line in msgs, f"logged error msgs {msgs!r} do not include stderr {line!r}"
    for entry in res.log_lines:
        assert "_unparsed" not in entry, f"--log-format json wrote a non-JSON line: {res}"
    return line


def verb_failed(runtime_name: str, verb: str, cause: str | None) -> re.Pattern[str]:
    """A pattern for "<prog> <verb> failed: <cause>" (any cause if None)."""
    progs = "runc" if runtime_name == "runc" else "(?:runc|vmrt)"
    tail = ".+" if cause is None else re.escape(cause)
    return re.compile(rf"{progs} {re.escape(verb)} failed: {tail}")
