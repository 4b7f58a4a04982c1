"""Typed settings: one dataclass field per setting, with its one default and its help text.

Config dataclasses (engines, supernet, calibration, run) declare their fields with
:func:`setting`; the command line derives its flags, help and defaults from them
(:mod:`sparsearch.launch.options`), and presets load into them, so a default lives in one place.
Validation happens on creation (``__post_init__``) and raises :class:`ConfigError` naming the
field and the bad value (:func:`require`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from sparsearch.base.errors import ConfigError


def setting(default: Any, help: str, *, flag: str | None = None, choices: Sequence[Any] | None = None,
            metavar: str | None = None, cli: bool = True) -> Any:
    """A config field: ``default`` and ``help``; ``flag`` overrides the command-line name (default:
    the field name with dashes), ``choices`` restricts values, ``cli=False`` keeps it off the
    command line (library-only settings)."""
    meta = {"help": help, "flag": flag, "choices": tuple(choices) if choices else None, "metavar": metavar, "cli": cli}
    return dataclasses.field(default=default, metadata=meta)


def require(ok: bool, name: str, value: Any, expected: str) -> None:
    """Raise :class:`ConfigError` ``"{name} must be {expected}, got {value!r}"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{name} must be {expected}, got {value!r}")


def require_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    require(value in choices, name, value, "one of " + ", ".join(map(str, choices)))


def settings(cls: type) -> list[dataclasses.Field]:
    """The fields of a config dataclass that carry :func:`setting` metadata."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def as_dict(cfg: Any) -> dict[str, Any]:
    """The config's fields as plain JSON values."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(v: Any) -> Any:
    if hasattr(v, "to_json"):  # a value type that knows its JSON form (e.g. a ladder)
        return v.to_json()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v
