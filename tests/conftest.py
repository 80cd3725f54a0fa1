"""Fixtures shared by the runtime-level suites.

* `runtime_spec` (session): which runtime is under test - $VMRT_TEST_RUNTIME = vmrt
  (default, the venv's `vmrt` console script) | runc | /abs/path.
* `runtime` (function): that runtime bound to a private --root and --log; its teardown
  checks that the test left nothing behind (containers, processes, mounts) and cleans up.
* `busybox_rootfs` (session) and `bundle` (function factory): OCI bundles, each with its
  own copy of a busybox-static root filesystem.
* `new_id` (function): unique container ids (host resources may be named after them).

Set VMRT_TEST_EXCLUSIVE=1 when nothing else on the machine starts QEMU/virtiofsd: then
every QEMU/virtiofsd that appears during a test and outlives it is blamed on the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import procs
from helpers.rootfs import build_busybox_rootfs, make_spec, write_bundle
from helpers.runtime import Runtime, RuntimeSpec, resolve_runtime

EXCLUSIVE = os.environ.get("VMRT_TEST_EXCLUSIVE", "") not in ("", "0")


# -- outcome of the test body, for teardowns that should not pile errors on failures -------

@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _test_failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


# -- runtime -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def runtime_spec() -> RuntimeSpec:
    spec = resolve_runtime()
    if not (os.path.isfile(spec.binary) and os.access(spec.binary, os.X_OK)):
        pytest.skip(f"runtime under test not found: {spec.binary}")
    return spec


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short private directory under /tmp (unix socket paths are limited to 108 bytes
    and vmrt keeps sockets under --root)."""
    path = Path(tempfile.mkdtemp(prefix="vt", dir="/tmp"))
    yield path
    if not procs.mounts_under(path):
        shutil.rmtree(path, ignore_errors=True)


def _lazy_umount(paths: list[str]) -> None:
    for mnt in sorted(paths, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mnt], check=False, capture_output=True)


class LeftoverCheck:
    """Snapshot at setup; at teardown, everything the test started under `marker` must be
    gone.  `problems()` reports, `clean()` kills what remains."""

    def __init__(self, marker: Path, grace: float) -> None:
        self.marker = str(marker)
        self.grace = grace
        self.watched_before = procs.watched_snapshot()

    def processes(self) -> list[procs.Proc]:
        found = {p.key: p for p in procs.procs_mentioning(self.marker)}
        for p in procs.new_watched(self.watched_before, marker=self.marker,
                                   exclusive=EXCLUSIVE):
            found[p.key] = p
        return list(found.values())

    def wait_processes_gone(self) -> list[procs.Proc]:
        left: list[procs.Proc] = []

        def gone() -> bool:
            left[:] = self.processes()
            return not left

        procs.wait_until(gone, self.grace, interval=0.05)
        return left

    def mounts(self) -> list[str]:
        return procs.mounts_under(self.marker)


@pytest.fixture
def runtime(
    runtime_spec: RuntimeSpec, short_tmp: Path, request: pytest.FixtureRequest
) -> Iterator[Runtime]:
    """The runtime under test with a private --root and --log (json)."""
    rt = Runtime(runtime_spec, root=short_tmp / "root", log=short_tmp / "log.json")
    check = LeftoverCheck(short_tmp, grace=30.0 if rt.is_vmrt else 5.0)
    yield rt

    failed = _test_failed(request)
    problems: list[str] = []
    try:
        ids = rt.list_ids() if rt.root.exists() else []
    except (AssertionError, subprocess.TimeoutExpired) as e:
        ids = []
        problems.append(f"`list -q` failed at teardown: {e}")
    if ids:
        problems.append(f"containers left in --root: {ids}")
        rt.force_delete_all()
    if rt.is_vmrt:
        cdir = rt.root / "containers"
        left_dirs = sorted(p.name for p in cdir.iterdir()) if cdir.is_dir() else []
        if left_dirs:
            problems.append(f"{cdir} still holds {left_dirs}")
    left = check.wait_processes_gone()
    if left:
        problems.append("processes left behind:\n  " + "\n  ".join(map(str, left)))
        procs.kill_procs(left)
        procs.wait_gone([p.pid for p in left], 5.0)
    mounts = check.mounts()
    if mounts:
        problems.append(f"mounts left under {short_tmp}: {mounts}")
        _lazy_umount(mounts)
    if problems and not failed:
        with contextlib.suppress(OSError):
            log_tail = rt.log.read_text()[-2000:]
            problems.append(f"--log tail:\n{log_tail}")
        pytest.fail("test left things behind:\n" + "\n".join(problems), pytrace=False)


# -- rootfs and bundles --------------------------------------------------------------------

@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


BundleFactory = Callable[..., Path]


@pytest.fixture
def bundle(busybox_rootfs: Path, tmp_path: Path) -> BundleFactory:
    """bundle(args, *, name=None, terminal=False, annotations=None, cgroups_path=None,
    namespaces=None, env=None, cwd="/", with_rootfs=True, with_config=True) -> Path

    A bundle directory with a config.json like `runc spec` writes (non-terminal unless
    asked) and a private copy of the busybox rootfs."""
    counter = [0]

    def make(
        args: list[str],
        *,
        name: str | None = None,
        with_rootfs: bool = True,
        with_config: bool = True,
        **spec_kw: Any,
    ) -> Path:
        counter[0] += 1
        path = tmp_path / "bundles" / (name or f"b{counter[0]}")
        spec = make_spec(args, **spec_kw) if with_config else None
        return write_bundle(path, busybox_rootfs if with_rootfs else None, spec)

    return make


@pytest.fixture
def vmrt_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """vmrt_config(toml_text) -> Path: a private vmrt config file, named by VMRT_CONFIG
    for every runtime call of the test."""
    def write(text: str) -> Path:
        config = tmp_path / "vmrt-config.toml"
        config.write_text(text)
        monkeypatch.setenv("VMRT_CONFIG", str(config))
        return config

    return write


@pytest.fixture
def new_id() -> Callable[[], str]:
    """Fresh container ids, unique across tests (vmrt may name host resources by id)."""
    def make() -> str:
        return "t" + uuid.uuid4().hex[:12]

    return make
