"""renameat2(RENAME_NOREPLACE): a rename that fails instead of replacing its target.

Plain rename(2) silently replaces an empty target directory, so two claims racing
for the same name could both "succeed". With RENAME_NOREPLACE one syscall both
takes the source (ENOENT: someone else took it) and the target name (EEXIST:
someone else holds it), atomically.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

AT_FDCWD = -100
RENAME_NOREPLACE = 1


@functools.cache
def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def rename_noreplace(src: Path, dst: Path) -> None:
    """:raise FileNotFoundError: `src` is gone. :raise FileExistsError: `dst` exists."""
    import ctypes

    if _libc().renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst),
                         RENAME_NOREPLACE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(src), None, str(dst))
