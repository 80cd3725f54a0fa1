"""Just enough ELF parsing to check that a root's shared libraries are closed.

Reads the program headers (they survive stripping, unlike section headers):
``PT_INTERP`` names the dynamic loader, ``PT_DYNAMIC`` holds the ``DT_NEEDED``
names and ``DT_RUNPATH``/``DT_RPATH``, whose strings live at ``DT_STRTAB`` (a
virtual address, mapped to a file offset through the ``PT_LOAD`` segments).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Final

ELF_MAGIC: Final = b"\x7fELF"
_PT_LOAD: Final = 1
_PT_DYNAMIC: Final = 2
_PT_INTERP: Final = 3
_DT_NULL: Final = 0
_DT_NEEDED: Final = 1
_DT_STRTAB: Final = 5
_DT_RPATH: Final = 15
_DT_RUNPATH: Final = 29
_EHDR: Final = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR: Final = struct.Struct("<IIQQQQQQ")
_DYN: Final = struct.Struct("<qQ")

#: Where the guest's loader looks (Debian's multiarch dirs; no ld.so.cache needed).
DEFAULT_LIB_DIRS: Final = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/lib",
    "/usr/lib",
)


class ElfError(Exception):
    """A file looks like ELF but cannot be parsed, or is not x86-64 little-endian."""


@dataclass
class ElfInfo:
    interpreter: str | None = None
    needed: list[str] = field(default_factory=list)
    runpath: list[str] = field(default_factory=list)


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def parse_elf(data: bytes) -> ElfInfo:
    """The loader and the libraries an ELF image needs."""
    if data[:4] != ELF_MAGIC:
        raise ElfError("not an ELF file")
    if len(data) < _EHDR.size:
        raise ElfError("truncated ELF header")
    if data[4] != 2 or data[5] != 1:
        raise ElfError("only 64-bit little-endian ELF is supported")
    (_, _, machine, _, _, phoff, _, _, _, phentsize, phnum, _, _, _) = _EHDR.unpack_from(data)
    if machine != 62:  # EM_X86_64
        raise ElfError(f"unexpected ELF machine {machine}")
    info = ElfInfo()
    loads: list[tuple[int, int, int]] = []  # (vaddr, filesz, offset)
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        start = phoff + i * phentsize
        if start + _PHDR.size > len(data):
            raise ElfError("truncated program header table")
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = _PHDR.unpack_from(data, start)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_filesz, p_offset))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == _PT_INTERP:
            info.interpreter = data[p_offset : p_offset + p_filesz].split(b"\0", 1)[0].decode()
    if dynamic is None:
        return info  # static
    tags: list[tuple[int, int]] = []
    offset, size = dynamic
    for pos in range(offset, min(offset + size, len(data)) - _DYN.size + 1, _DYN.size):
        tag, value = _DYN.unpack_from(data, pos)
        if tag == _DT_NULL:
            break
        tags.append((tag, value))
    strtab_vaddr = next((v for t, v in tags if t == _DT_STRTAB), None)
    if strtab_vaddr is None:
        raise ElfError("PT_DYNAMIC without DT_STRTAB")
    strtab = _vaddr_to_offset(loads, strtab_vaddr)

    def string(off: int) -> str:
        start = strtab + off
        end = data.index(b"\0", start)
        return data[start:end].decode()

    for tag, value in tags:
        if tag == _DT_NEEDED:
            info.needed.append(string(value))
        elif tag in (_DT_RUNPATH, _DT_RPATH):
            info.runpath.extend(p for p in string(value).split(":") if p)
    return info


def _vaddr_to_offset(loads: Iterable[tuple[int, int, int]], vaddr: int) -> int:
    for seg_vaddr, filesz, offset in loads:
        if seg_vaddr <= vaddr < seg_vaddr + filesz:
            return vaddr - seg_vaddr + offset
    raise ElfError(f"address {vaddr:#x} is in no PT_LOAD segment")


def resolve_in_root(root: Path, path: str, *, max_links: int = 40) -> Path | None:
    """Resolves ``path`` as the guest would, with ``root`` as ``/``; ``None`` if it is absent.

    Symlinks are followed inside the root: an absolute target restarts at
    ``root``, never at the host's ``/``.
    """
    pending = [p for p in PurePosixPath(path).parts if p != "/"]
    pending.reverse()
    current: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = root.joinpath(*current, part)
        if candidate.is_symlink():
            links += 1
            if links > max_links:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = []
            target_parts = [p for p in PurePosixPath(target).parts if p != "/"]
            pending.extend(reversed(target_parts))
            continue
        if not os.path.lexists(candidate):
            return None
        current.append(part)
    return root.joinpath(*current)


@dataclass(frozen=True)
class Missing:
    """A kept ELF file (``path``, guest-absolute) needs ``what``, which the root lacks."""

    path: str
    what: str
    kind: str  # "library" or "interpreter"

    def __str__(self) -> str:
        return f"{self.path} needs {self.kind} {self.what}"


def find_library(root: Path, name: str, *, origin: str, runpath: Iterable[str] = ()) -> Path | None:
    if "/" in name:
        return resolve_in_root(root, name)
    dirs = [p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for p in runpath]
    for directory in [*dirs, *DEFAULT_LIB_DIRS]:
        found = resolve_in_root(root, f"{directory}/{name}")
        if found is not None and found.is_file():
            return found
    return None


def check_closure(root: Path) -> tuple[int, list[Missing]]:
    """Checks every ELF file in ``root``; returns how many were checked and what is missing."""
    missing: list[Missing] = []
    checked = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_symlink() or not is_elf(path):
                continue
            checked += 1
            guest = "/" + path.relative_to(root).as_posix()
            try:
                info = parse_elf(path.read_bytes())
            except ElfError as e:
                raise ElfError(f"{guest}: {e}") from e
            if info.interpreter is not None:
                loader = resolve_in_root(root, info.interpreter)
                if loader is None or not loader.is_file():
                    missing.append(Missing(guest, info.interpreter, "interpreter"))
            origin = str(PurePosixPath(guest).parent)
            for lib in info.needed:
                if find_library(root, lib, origin=origin, runpath=info.runpath) is None:
                    missing.append(Missing(guest, lib, "library"))
    return checked, missing
