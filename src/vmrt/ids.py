"""Container ID validation, the same rule runc applies.

IDs become directory names under --root and values in QEMU option strings,
so anything that could escape a directory (`/`, `..`) or break a line is
refused before the ID is used anywhere.
"""

from __future__ import annotations

import re

from vmrt.errors import InvalidArgumentError

_ID_RE = re.compile(r"[\w+\-.]+", re.ASCII)
MAX_ID_LEN = 1024


def validate_id(container_id: str) -> str:
    if not container_id:
        raise InvalidArgumentError("container id cannot be empty")
    if (len(container_id) > MAX_ID_LEN or container_id in (".", "..")
            or not _ID_RE.fullmatch(container_id)):
        raise InvalidArgumentError("invalid container ID format")
    return container_id
