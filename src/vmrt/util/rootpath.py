"""Resolve a path inside a container's rootfs as the container will see it.

Symlinks in an image are relative to the image's root (merged-/usr images
make /bin a link to usr/bin), so they must not be followed on the host.
"""

from __future__ import annotations

import os
import stat

MAX_LINKS = 40


def resolve_in_root(root: str, path: str) -> str | None:
    """The host path of `path` in `root`, following links inside `root`; None if absent."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current = root
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current if current == root else os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        try:
            st = os.lstat(candidate)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        current = candidate
    return current


def find_executable(root: str, name: str, env: list[str]) -> str | None:
    """Where the container's exec(3p) of `name` would land, or None (runc checks at create)."""
    if "/" in name:
        found = resolve_in_root(root, name)
        return found if found and os.path.isfile(found) else None
    path = next((e[5:] for e in env if e.startswith("PATH=")), "/usr/local/sbin:/usr/local/bin:"
                "/usr/sbin:/usr/bin:/sbin:/bin")
    for directory in path.split(":"):
        found = resolve_in_root(root, os.path.join(directory or ".", name))
        if found and os.path.isfile(found) and os.access(found, os.X_OK):
            return found
    return None
