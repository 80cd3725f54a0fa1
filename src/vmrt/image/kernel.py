"""The guest kernel: a minimal Linux built locally from Debian's ``linux-source-6.1``.

``ensure_kernel(cache_dir)`` returns the path of an uncompressed ``vmlinux``
with a PVH note (QEMU's ``-kernel`` boots it directly, with no BIOS and no
decompressor) built from ``images/kernel.config`` on top of ``make
allnoconfig``. Builds are cached under ``cache_dir/kernel-<key>/``, where the
key hashes the fragment's bytes, the source package's version and
``BUILDER_VERSION``: a cached kernel is found in milliseconds, a new one takes
about five minutes on two cores.

Concurrent callers are safe: one builds while the others wait on a lock, and
a finished kernel enters the cache by one atomic ``rename`` of a complete
directory, so a reader never sees half a kernel.

Run ``python -m vmrt.image.kernel CACHE_DIR`` to build by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

__all__ = [
    "BOOT_TARGET",
    "BUILDER_VERSION",
    "BUILD_DEPENDENCIES",
    "KERNEL_CMDLINE",
    "KERNEL_CMDLINE_TCG",
    "KERNEL_CONFIG_FRAGMENT",
    "SOURCE_PACKAGE",
    "KernelBuildError",
    "cache_key",
    "ensure_kernel",
    "fragment_settings",
]

#: src/vmrt/image/kernel.py -> the repository root is three parents above the package.
_REPO_ROOT: Final = Path(__file__).resolve().parents[3]
KERNEL_CONFIG_FRAGMENT: Final = _REPO_ROOT / "images" / "kernel.config"

SOURCE_PACKAGE: Final = "linux-source-6.1"
#: Bump whenever the way the kernel is built changes (steps, target, output layout).
BUILDER_VERSION: Final = "1"
#: The make target that boots fastest under QEMU: the uncompressed ELF with its
#: PVH note. QEMU loads it straight into guest memory (no SeaBIOS/linuxboot
#: option ROM, no decompression), which measured faster than bzImage.
BOOT_TARGET: Final = "vmlinux"

#: Debian packages needed to download, unpack and build the kernel.
BUILD_DEPENDENCIES: Final[tuple[str, ...]] = (
    "bc",
    "bison",
    "cpio",
    "dpkg",
    "flex",
    "gcc",
    "libc6-dev",
    "libelf-dev",
    "libssl-dev",
    "make",
    "tar",
    "xz-utils",
)

#: The guest kernel's command line, measured under TCG on q35 (medians in
#: images/README-kernel.md). Not ``pci=lastbus=0``: devices are hot-plugged
#: into pcie-root-ports, whose buses are above 0. The i8042.* options are
#: no-ops for vmrt's kernel (no i8042 driver) but keep a distribution kernel
#: given instead (``cfg.kernel``) from probing a keyboard controller.
KERNEL_CMDLINE: Final[tuple[str, ...]] = (
    "console=ttyS0",  # the VM's serial port: kernel messages and panics
    "quiet",  # ≈50-70 ms less serial output under TCG
    "panic=-1",  # reboot at once on panic; with -no-reboot QEMU then exits
    "reboot=k",  # reboot through the keyboard controller: instant, QEMU exits
    "tsc=reliable",  # no TSC watchdog/clocksource checks
    "no_timer_check",  # skip the IO-APIC timer IRQ test
    "noreplace-smp",  # ≈60-70 ms: no patching of SMP lock prefixes with 1 vCPU
    "rcupdate.rcu_expedited=1",  # faster synchronize_rcu (netns, mounts)
    "cryptomgr.notests",  # no crypto self-tests (≈0.25 s with Debian's kernel)
    "i8042.direct=1",
    "i8042.dumbkbd=1",
    "i8042.nopnp=1",
    "i8042.noaux=1",
)

#: Appended under TCG when the config says `guest_tickless = false`: skips the
#: 100 ms calibration of the local APIC timer (TCG has no TSC-deadline timer)
#: and ticks from the HPET/PIT instead (≈0.1-0.14 s less boot). But that tick is
#: periodic (250 Hz, no one-shot device left for NO_HZ): an idle guest then costs
#: ≈1.9 % of a host CPU instead of ≈0.3 % (bench/: 100 idle pods would need ≈190 %
#: of this 2-core machine), so it is not the default. Under KVM the TSC-deadline
#: timer already avoids the calibration, and the emulated HPET would make every
#: timer costlier.
KERNEL_CMDLINE_TCG: Final[tuple[str, ...]] = ("noapictimer",)

#: Appended under TCG unless the config says `guest_aslr = true`: every guest
#: process maps its binary and libraries at the same addresses. QEMU 7.2's TCG
#: keys a translated block by its virtual address too, so with ASLR each new
#: process (every crun call) translated ld.so, libc and crun afresh: measured in
#: a guest, `crun create` 58 -> 27 ms, `crun start` 38 -> 22 ms, `crun run` 80 ->
#: 53 ms, and a member's join 244 -> 184 ms. The VM stays the isolation boundary;
#: under KVM (no translation) the guest keeps ASLR.
KERNEL_CMDLINE_TCG_FIXED_MAPS: Final[tuple[str, ...]] = ("norandmaps",)

_TAIL_LINES: Final = 40
_CONFIG_LINE: Final = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_LINE: Final = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_CANDIDATE: Final = re.compile(r"^\s*Candidate:\s*(\S+)\s*$", re.MULTILINE)
_META: Final = "build.json"
_STALE_SECONDS: Final = 3600
_OWNER: Final = ".owner"
_APT_STATE: Final = (
    "/var/lib/apt/lists",
    "/etc/apt/sources.list",
    "/etc/apt/sources.list.d",
    "/etc/apt/preferences",
    "/etc/apt/preferences.d",
    "/var/lib/dpkg/status",
)


class KernelBuildError(Exception):
    """Building the guest kernel failed; the text names the command and ends with its output."""

    def __init__(self, message: str, *, command: Sequence[str] = (), output: str = "") -> None:
        self.command = tuple(command)
        self.output = output
        text = message
        if self.command:
            text += f"\ncommand: {' '.join(self.command)}"
        if output:
            text += f"\n--- last lines of output ---\n{output}"
        super().__init__(text)


Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def fragment_settings(text: str) -> dict[str, str | None]:
    """Parse a config fragment: ``{"CONFIG_X": value}``, with ``None`` for "is not set".

    Raises ``ValueError`` on a line that is neither a setting, an unset
    marker, a comment nor blank.
    """
    settings: dict[str, str | None] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if m := _UNSET_LINE.match(line):
            settings[m.group(1)] = None
            continue
        if line.startswith("#"):
            continue
        m = _CONFIG_LINE.match(line)
        if m is None or not m.group(2):
            raise ValueError(f"line {lineno}: not a kconfig setting: {raw!r}")
        settings[m.group(1)] = m.group(2)
    return settings


def cache_key(fragment_bytes: bytes, source_version: str) -> str:
    """The cache key of a kernel built from these fragment bytes and source version."""
    h = hashlib.sha256()
    for part in (fragment_bytes, source_version.encode(), BUILDER_VERSION.encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:24]


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    log: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run argv; return its stdout (or "" when it was sent to ``log``). Raise on failure."""
    try:
        if log is None:
            proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise KernelBuildError(
                    f"command failed with exit status {proc.returncode}",
                    command=argv,
                    output=_tail(proc.stdout + proc.stderr),
                )
            return proc.stdout
        with log.open("wb") as out:
            rc = subprocess.run(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            ).returncode
        if rc != 0:
            raise KernelBuildError(
                f"command failed with exit status {rc}",
                command=argv,
                output=_tail(log.read_text(errors="replace")),
            )
        return ""
    except FileNotFoundError as e:
        raise KernelBuildError(
            f"{argv[0]} is not installed (build dependencies: {' '.join(BUILD_DEPENDENCIES)})",
            command=argv,
        ) from e


def _apt_stamp() -> list[list[object]]:
    """What apt's candidate version depends on: its lists, sources, pins and dpkg's status."""
    stamp: list[list[object]] = []
    for path in _APT_STATE:
        try:
            st = os.stat(path)
        except OSError:
            stamp.append([path])
        else:
            stamp.append([path, st.st_mtime_ns, st.st_size, st.st_ino])
    return stamp


def _apt_candidate(cache_dir: Path) -> str | None:
    """The candidate version of the source package, or None when apt does not know it.

    ``apt-cache policy`` takes ≈0.5 s where the system disables apt's
    ``pkgcache.bin`` (Debian's container images do), so its answer is kept in
    ``cache_dir`` together with the state of apt's lists, sources and pins,
    and asked again only once those change (``apt-get update``).
    """
    memo = cache_dir / ".apt-candidate.json"
    stamp = _apt_stamp()
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(memo.read_text())
        if isinstance(saved, dict) and saved.get("stamp") == stamp:
            version = saved.get("version")
            if isinstance(version, str) and version:
                return version
    try:
        out = subprocess.run(
            ["apt-cache", "policy", SOURCE_PACKAGE], capture_output=True, text=True, check=False
        ).stdout
    except FileNotFoundError:
        return None
    m = _CANDIDATE.search(out)
    if m is None or m.group(1) == "(none)":
        return None
    with contextlib.suppress(OSError):
        tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"stamp": stamp, "version": m.group(1)}) + "\n")
        os.replace(tmp, memo)
    return m.group(1)


def _kernel_file(entry: Path) -> Path:
    return entry / BOOT_TARGET


def _latest_cached(cache_dir: Path, fragment_sha: str) -> Path | None:
    """The newest cached kernel built from this fragment by this builder, if any."""
    best: tuple[float, Path] | None = None
    for meta_path in cache_dir.glob(f"kernel-*/{_META}"):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if (
            isinstance(meta, dict)
            and meta.get("fragment_sha256") == fragment_sha
            and meta.get("builder_version") == BUILDER_VERSION
            and _kernel_file(meta_path.parent).is_file()
        ):
            mtime = meta_path.stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, _kernel_file(meta_path.parent))
    return None if best is None else best[1]


@contextlib.contextmanager
def _locked(path: Path, on_wait: Progress = _quiet) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait(f"waiting for another build of this kernel ({path.name})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_config(fragment: dict[str, str | None], config_text: str) -> None:
    """Fail loudly when olddefconfig dropped or changed a setting of the fragment."""
    final: dict[str, str | None] = {}
    for line in config_text.splitlines():
        if m := _CONFIG_LINE.match(line):
            final[m.group(1)] = m.group(2)
        elif m := _UNSET_LINE.match(line):
            final[m.group(1)] = None
    lost: list[str] = []
    for name, want in fragment.items():
        got = final.get(name)
        if want is None:
            if got not in (None, "n"):
                lost.append(f"# {name} is not set  (now {name}={got})")
        elif got != want:
            now = "is not set" if got is None else f"={got}"
            lost.append(f"{name}={want}  (now {now})")
    if lost:
        raise KernelBuildError(
            f"{len(lost)} setting(s) of the kernel config fragment did not survive "
            "`make olddefconfig` (a dependency is missing from the fragment):\n  " + "\n  ".join(lost)
        )


def _build(
    cache_dir: Path,
    entry: Path,
    *,
    fragment: Path,
    fragment_bytes: bytes,
    deb: Path,
    version: str,
    work: Path,
    progress: Progress,
) -> None:
    """Unpack, configure and build into ``work``; then publish ``entry`` atomically."""
    started = time.monotonic()
    progress(f"unpacking {deb.name}")
    pkg_root = work / "deb"
    _run(["dpkg-deb", "-x", str(deb), str(pkg_root)])
    tarballs = sorted((pkg_root / "usr" / "src").glob("linux-source-*.tar.*"))
    if not tarballs:
        raise KernelBuildError(f"no /usr/src/linux-source-*.tar.* in {deb.name}")
    _run(["tar", "-xf", str(tarballs[0]), "-C", str(work)])
    shutil.rmtree(pkg_root)
    src = work / tarballs[0].name.split(".tar.")[0]
    if not (src / "Makefile").is_file():
        raise KernelBuildError(f"{tarballs[0].name} did not unpack to {src.name}/")

    env = dict(os.environ)
    env.update(
        LC_ALL="C",
        ARCH="x86_64",
        KBUILD_BUILD_USER="vmrt",
        KBUILD_BUILD_HOST="vmrt",
        KBUILD_BUILD_TIMESTAMP=f"linux-source {version}",
    )
    env.pop("CROSS_COMPILE", None)
    progress("configuring: allnoconfig + fragment + olddefconfig")
    frag_copy = work / "vmrt.config"
    frag_copy.write_bytes(fragment_bytes)
    _run(["make", "allnoconfig"], cwd=src, env=env, log=work / "allnoconfig.log")
    _run(
        ["scripts/kconfig/merge_config.sh", "-m", ".config", str(frag_copy)],
        cwd=src,
        env=env,
        log=work / "merge_config.log",
    )
    _run(["make", "olddefconfig"], cwd=src, env=env, log=work / "olddefconfig.log")
    config_text = (src / ".config").read_text()
    _check_config(fragment_settings(fragment_bytes.decode()), config_text)

    jobs = len(os.sched_getaffinity(0)) or 1
    progress(f"building {BOOT_TARGET} with make -j{jobs} (about 5 minutes on 2 cores)")
    _run(["make", f"-j{jobs}", BOOT_TARGET], cwd=src, env=env, log=work / "build.log")
    built = src / BOOT_TARGET
    if not built.is_file():
        raise KernelBuildError(f"make {BOOT_TARGET} succeeded but left no {built}")
    release = (src / "include" / "config" / "kernel.release").read_text().strip()

    stage = Path(tempfile.mkdtemp(prefix=".tmp-kernel-", dir=cache_dir))
    try:
        shutil.copyfile(built, _kernel_file(stage))
        (stage / "config").write_text(config_text)
        meta = {
            "source_package": SOURCE_PACKAGE,
            "source_version": version,
            "kernel_release": release,
            "builder_version": BUILDER_VERSION,
            "fragment": str(fragment),
            "fragment_sha256": hashlib.sha256(fragment_bytes).hexdigest(),
            "target": BOOT_TARGET,
            "build_seconds": round(time.monotonic() - started, 1),
        }
        (stage / _META).write_text(json.dumps(meta, indent=2) + "\n")
        for p in stage.iterdir():
            with p.open("rb") as f:
                os.fsync(f.fileno())
        stage.chmod(0o755)
        os.rename(stage, entry)
    except OSError:
        shutil.rmtree(stage, ignore_errors=True)
        if not _kernel_file(entry).is_file():
            raise
    fd = os.open(cache_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _download(into: Path, version: str | None, say: Progress) -> tuple[Path, str]:
    """``apt-get download`` the source package into ``into``: (the .deb, its version)."""
    into.mkdir()
    spec = SOURCE_PACKAGE if version is None else f"{SOURCE_PACKAGE}={version}"
    say(f"downloading {spec}")
    argv = ["apt-get", "download", spec]
    if os.geteuid() == 0:
        # root's temp dirs are not readable by apt's sandbox user _apt.
        argv[1:1] = ["-o", "APT::Sandbox::User=root"]
    _run(argv, cwd=into)
    debs = sorted(into.glob(f"{SOURCE_PACKAGE}_*.deb"))
    if len(debs) != 1:
        raise KernelBuildError(f"apt-get download left {len(debs)} .deb files", command=argv)
    return debs[0], _run(["dpkg-deb", "-f", str(debs[0]), "Version"]).strip()


def _owner_alive(work: Path) -> bool:
    """Whether the builder that made ``work`` still runs (it holds a lock on its owner file)."""
    try:
        fd = os.open(work / _OWNER, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        # Not yet created, or left by a builder killed before it got that far.
        return time.time() - work.stat().st_mtime < _STALE_SECONDS
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _remove_stale(cache_dir: Path) -> None:
    """Remove work dirs that killed builders left behind (SIGTERM skips Python's cleanup)."""
    for pattern in (".tmp-build-*", ".tmp-kernel-*"):
        for d in cache_dir.glob(pattern):
            with contextlib.suppress(OSError):
                if not _owner_alive(d):
                    shutil.rmtree(d, ignore_errors=True)


def ensure_kernel(
    cache_dir: Path,
    *,
    fragment: Path | None = None,
    progress: Callable[[str], None] | None = None,
    source_version: str | None = None,
) -> Path:
    """Return the path of a guest kernel built from ``fragment``; build it if needed.

    The kernel lives at ``cache_dir/kernel-<key>/vmlinux``, next to the final
    ``config`` and a ``build.json``. ``source_version`` pins the version of
    ``linux-source-6.1`` to look for (skipping the apt lookup); by default it
    is apt's candidate. When apt knows no candidate (no package lists), the
    newest kernel cached from the same fragment is returned.
    """
    say = progress or _quiet
    fragment = (fragment or KERNEL_CONFIG_FRAGMENT).resolve()
    try:
        fragment_bytes = fragment.read_bytes()
    except OSError as e:
        raise KernelBuildError(f"cannot read kernel config fragment {fragment}: {e}") from e
    try:
        fragment_settings(fragment_bytes.decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise KernelBuildError(f"kernel config fragment {fragment}: {e}") from e
    cache_dir = cache_dir.resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)

    version = source_version or _apt_candidate(cache_dir)
    if version is None:
        cached = _latest_cached(cache_dir, hashlib.sha256(fragment_bytes).hexdigest())
        if cached is not None:
            return cached
    else:
        kernel = _kernel_file(cache_dir / f"kernel-{cache_key(fragment_bytes, version)}")
        if kernel.is_file():
            return kernel

    # One builder per key: the others wait here, then find the kernel built.
    # (With no version known yet, all such builders share one lock.)
    lock_name = "unversioned" if version is None else cache_key(fragment_bytes, version)
    with _locked(cache_dir / f".kernel-{lock_name}.lock", say):
        if version is not None:
            kernel = _kernel_file(cache_dir / f"kernel-{cache_key(fragment_bytes, version)}")
            if kernel.is_file():  # another builder finished while we waited
                return kernel
        _remove_stale(cache_dir)
        with (
            tempfile.TemporaryDirectory(
                prefix=".tmp-build-", dir=cache_dir, ignore_cleanup_errors=True
            ) as tmp,
            _locked(Path(tmp) / _OWNER),  # tells _remove_stale that this builder lives
        ):
            work = Path(tmp)
            deb, deb_version = _download(work / "download", version, say)
            entry = cache_dir / f"kernel-{cache_key(fragment_bytes, deb_version)}"
            if not _kernel_file(entry).is_file():
                _build(
                    cache_dir,
                    entry,
                    fragment=fragment,
                    fragment_bytes=fragment_bytes,
                    deb=deb,
                    version=deb_version,
                    work=work,
                    progress=say,
                )
    say(f"kernel ready: {_kernel_file(entry)}")
    return _kernel_file(entry)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse  # noqa: PLC0415  (only the command line needs it)

    parser = argparse.ArgumentParser(
        prog="python -m vmrt.image.kernel",
        description="Build (or find in the cache) vmrt's guest kernel and print its path.",
    )
    parser.add_argument("cache_dir", type=Path, help="cache directory, e.g. ~/.cache/vmrt")
    parser.add_argument("--fragment", type=Path, default=None, help="kconfig fragment")
    args = parser.parse_args(argv)

    def report(msg: str) -> None:
        print(f"vmrt kernel: {msg}", file=sys.stderr, flush=True)

    try:
        path = ensure_kernel(args.cache_dir, fragment=args.fragment, progress=report)
    except KernelBuildError as e:
        print(f"vmrt kernel: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
