"""`config show`: the effective configuration, each key with its value and where it came from.

An operator debugging a pod VM first needs to know which QEMU, accelerator
and sizes vmrt will really use; the answer depends on built-in defaults, the
file named by --config / VMRT_CONFIG, or /etc/vmrt/config.toml, so each key
carries its source ("default" or the file's path).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vmrt.config import DEFAULT_CONFIG_PATH, Config
from vmrt.runtime.context import Context
from vmrt.util.record import fields


@dataclass(frozen=True)
class Setting:
    key: str
    value: str | int | float | bool
    default: str | int | float | bool
    source: str  # "default" or the config file's path
    note: str = ""  # what an empty value stands for


@dataclass(frozen=True)
class EffectiveConfig:
    file: str  # the file that was (or would have been) read
    file_exists: bool
    settings: tuple[Setting, ...]


def effective(ctx: Context) -> EffectiveConfig:
    cfg = ctx.config
    file = ctx.config_path or DEFAULT_CONFIG_PATH  # click already folded VMRT_CONFIG in
    defaults = Config()
    settings = []
    for f in fields(Config):
        if f.name == "source":
            continue
        value = getattr(cfg, f.name)
        settings.append(Setting(f.name, value, getattr(defaults, f.name),
                                cfg.source.get(f.name, "default"), _note(cfg, f.name, value)))
    return EffectiveConfig(file, Path(file).is_file(), tuple(settings))


def _note(cfg: Config, key: str, value: object) -> str:
    if value != "":
        return ""
    if key == "cache_dir":
        return f"the user cache dir: {cfg.cache_path}"
    if key in ("kernel", "initrd"):
        return "the built image's"
    return ""


def toml_value(value: str | int | float | bool) -> str:
    """The value as it would be written in config.toml."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return repr(value)
