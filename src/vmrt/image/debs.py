"""Debian packages for the guest root: pinning versions, fetching, unpacking.

``apt-get download --print-uris`` names, for each package, the exact file apt
would fetch -- version and SHA-256 included -- from the local package lists,
without network.  That takes ~0.5 s, so the answer is remembered in the cache
directory, keyed by the package list and the state of apt's lists
(``apt-get update`` invalidates it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote

from vmrt.util.record import asdict

APT_LISTS: Final = Path("/var/lib/apt/lists")
APT_CONFIG_FILES: Final = (
    Path("/etc/apt/sources.list"),
    Path("/etc/apt/sources.list.d"),
    Path("/etc/apt/preferences"),
    Path("/etc/apt/preferences.d"),
)
RESOLVE_CACHE_NAME: Final = "apt-resolved.json"
_RESOLVE_CACHE_ENTRIES: Final = 8

Progress = Callable[[str], None]


class PackageError(Exception):
    """A package cannot be resolved, fetched or unpacked."""


@dataclass(frozen=True)
class Deb:
    """One package pinned to the exact file apt would download."""

    name: str
    version: str
    filename: str
    size: int
    sha256: str

    @property
    def pin(self) -> str:
        return f"{self.name}={self.version}"


def read_package_list(path: Path) -> list[str]:
    """Package names from ``packages.txt``: one per line, ``#`` comments, blank lines."""
    names: list[str] = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if len(line.split()) != 1:
            raise PackageError(f"{path}:{lineno}: one package per line, got {line!r}")
        if line in names:
            raise PackageError(f"{path}:{lineno}: {line} listed twice")
        names.append(line)
    if not names:
        raise PackageError(f"{path}: no packages")
    return names


def parse_print_uris(output: str) -> list[Deb]:
    """Parses ``apt-get download --print-uris`` lines.

    ``'http://…/crun_1.8.1-1%2bdeb12u1_amd64.deb' crun_1.8.1-1+deb12u1_amd64.deb 289288 SHA256:…``
    """
    debs: list[Deb] = []
    for line in output.splitlines():
        if not line.startswith("'"):
            continue
        fields = line.split()
        if len(fields) < 4 or not fields[3].lower().startswith("sha256:"):
            raise PackageError(f"unexpected apt-get --print-uris line: {line!r}")
        filename = fields[1]
        stem = filename.removesuffix(".deb")
        parts = stem.split("_")
        if len(parts) != 3 or "/" in filename:
            raise PackageError(f"unexpected .deb file name {filename!r}")
        debs.append(
            Deb(
                name=parts[0],
                version=unquote(parts[1]),
                filename=filename,
                size=int(fields[2]),
                sha256=fields[3].split(":", 1)[1].lower(),
            )
        )
    return debs


def _apt_state() -> str:
    """Fingerprint of what apt's answer depends on: its lists and sources."""
    h = hashlib.sha256()
    paths: list[Path] = []
    for p in (APT_LISTS, *APT_CONFIG_FILES):
        if p.is_dir():
            paths.extend(sorted(c for c in p.iterdir() if c.is_file()))
        elif p.exists():
            paths.append(p)
    for p in paths:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _apt_options() -> list[str]:
    # As root, apt would drop to _apt and warn that it cannot write our cache dir.
    return ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []


def resolve(names: Sequence[str], cache_dir: Path) -> list[Deb]:
    """Pins each package to the file apt would download now (cached per apt state)."""
    fingerprint = hashlib.sha256(("\n".join(names) + "\0" + _apt_state()).encode()).hexdigest()
    cache_file = cache_dir / RESOLVE_CACHE_NAME
    entries: dict[str, list[dict[str, Any]]] = {}
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        loaded = json.loads(cache_file.read_text())
        entries = {str(k): list(v) for k, v in loaded.get("resolved", {}).items()}
    with contextlib.suppress(TypeError, KeyError, AttributeError):
        if fingerprint in entries:
            return [Deb(**d) for d in entries[fingerprint]]
    proc = subprocess.run(
        ["apt-get", "download", "--print-uris", "-q", *_apt_options(), *names],
        capture_output=True,
        text=True,
        check=False,
        cwd=cache_dir,
        env={**os.environ, "LC_ALL": "C"},
    )
    if proc.returncode != 0:
        raise PackageError(f"apt-get cannot resolve the guest packages:\n{proc.stderr.strip()}")
    debs = parse_print_uris(proc.stdout)
    got = {d.name for d in debs}
    if got != set(names) or len(debs) != len(names):
        raise PackageError(f"apt-get resolved {sorted(got)} for {sorted(names)}")
    order = {n: i for i, n in enumerate(names)}
    debs.sort(key=lambda d: order[d.name])
    entries.pop(fingerprint, None)
    entries[fingerprint] = [asdict(d) for d in debs]
    recent = dict(list(entries.items())[-_RESOLVE_CACHE_ENTRIES:])
    _atomic_write(cache_file, json.dumps({"resolved": recent}, indent=1))
    return debs


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fetch(debs: Iterable[Deb], debs_dir: Path, progress: Progress | None = None) -> list[Path]:
    """Makes sure every pinned .deb is in ``debs_dir`` (verified); downloads only what is missing.

    Downloads go to a private temporary directory and are renamed into place
    after their SHA-256 checks out, so concurrent builders never see a partial file.
    """
    debs = list(debs)
    debs_dir.mkdir(parents=True, exist_ok=True)
    paths = [debs_dir / d.filename for d in debs]
    missing = [
        d for d, p in zip(debs, paths, strict=True) if not (p.is_file() and p.stat().st_size == d.size)
    ]
    if missing:
        if progress:
            progress(f"downloading {len(missing)} packages: {' '.join(d.name for d in missing)}")
        with tempfile.TemporaryDirectory(dir=debs_dir, prefix=".download-") as tmp:
            proc = subprocess.run(
                ["apt-get", "download", "-q", *_apt_options(), *(d.pin for d in missing)],
                capture_output=True,
                text=True,
                check=False,
                cwd=tmp,
                env={**os.environ, "LC_ALL": "C"},
            )
            if proc.returncode != 0:
                raise PackageError(f"apt-get download failed:\n{proc.stderr.strip()}")
            for d in missing:
                got = Path(tmp) / d.filename
                if not got.is_file():
                    raise PackageError(f"apt-get download did not produce {d.filename}")
                digest = sha256_file(got)
                if digest != d.sha256:
                    raise PackageError(f"{d.filename}: sha256 {digest}, the archive says {d.sha256}")
                os.replace(got, debs_dir / d.filename)
    for d, p in zip(debs, paths, strict=True):
        if sha256_file(p) != d.sha256:
            p.unlink(missing_ok=True)
            raise PackageError(f"cached {p} is corrupt (sha256 mismatch); removed, build again")
    return paths


def extract(deb: Path, root: Path) -> None:
    """Unpacks a .deb's data into ``root`` (maintainer scripts are not run)."""
    if shutil.which("dpkg-deb") is None:
        raise PackageError("dpkg-deb is needed to build the guest root (apt install dpkg)")
    proc = subprocess.run(
        ["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise PackageError(f"dpkg-deb -x {deb.name} failed: {proc.stderr.strip()}")
