"""What every verb needs: where state lives, and vmrt's configuration (read lazily)."""

from __future__ import annotations

import functools

from vmrt.paths import Root
from vmrt.state.store import Store
from vmrt.util.record import record

TYPE_CHECKING = False  # typing is not imported at run time: `vmrt state` pays for every import
if TYPE_CHECKING:  # nor is the configuration read: tomllib stays unimported
    from vmrt.config import Config


@record
class Context:
    root: Root
    config_path: str | None = None

    @functools.cached_property
    def store(self) -> Store:
        return Store(self.root)

    @functools.cached_property
    def config(self) -> Config:
        from vmrt import config

        return config.load(self.config_path)
