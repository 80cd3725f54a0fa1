"""What every verb needs: where state lives, and vmrt's configuration (read lazily)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from vmrt.config import Config
from vmrt.paths import Root
from vmrt.state.store import Store


@dataclass(frozen=True)
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
