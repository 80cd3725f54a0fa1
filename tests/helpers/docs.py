"""The code blocks of the docs that tests run: each follows a `<!-- test: NAME -->` line.

    <!-- test: podman-containers.conf -->
    ```toml
    ...
    ```

The comment is invisible when the page is rendered; the test finds the block by
NAME, so a doc's prose can move freely while its commands and files stay tested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
_BLOCK = re.compile(r"^<!-- test: ([\w.-]+) -->\n```(\w*)\n(.*?)^```$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    name: str
    lang: str
    text: str


def tagged_blocks(doc: str) -> dict[str, Block]:
    """{name: block} of docs/<doc>; a name used twice is an error."""
    blocks: dict[str, Block] = {}
    for m in _BLOCK.finditer((DOCS / doc).read_text()):
        name = m.group(1)
        assert name not in blocks, f"{doc}: two blocks tagged {name}"
        blocks[name] = Block(name, m.group(2), m.group(3))
    return blocks
