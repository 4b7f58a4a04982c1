"""Command-line options derived from the config dataclasses, and presets merged into them.

Every flag that sets a config field is made from the field (:func:`sparsearch.base.settings.setting`):
its name, type, choices, help and default come from the dataclass, so the command line cannot
disagree with the library. Flags are added with no argparse default; a value is resolved as
the field's default, then the preset's value (``--config PRESET.yaml``, keys are flag names),
then the command line's. Plain options (paths, the model, ``--quiet``) are resolved the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from sparsearch.base.settings import settings
from sparsearch.base.errors import ConfigError, SparsearchError


@dataclass(frozen=True)
class Option:
    dest: str
    flag: str
    default: Any
    kind: type  # bool, int, float or str (the value's type on the command line and in presets)
    owners: tuple[str, ...] = ()  # engines that use the value, for the help
    choices: tuple[Any, ...] | None = None
    required: bool = False  # by the command line or the preset


def _kind(cls: type, f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(cls)[f.name]
    if hint is bool:
        return bool
    if hint in (int, float):
        return hint
    return str  # strings, optional strings, and values parsed by the dataclass (ladders)


def _coerce(opt: Option, value: Any, where: str) -> Any:
    """A preset's value as the option's type (YAML gives ints, floats, strings, booleans)."""
    if opt.kind is bool:
        ok = isinstance(value, bool)
    elif value is None:
        ok = opt.default is None
    elif isinstance(value, bool):
        ok = False
    elif opt.kind is float:
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    elif opt.kind is int:
        ok = isinstance(value, int)
    else:
        ok = isinstance(value, (str, int, float))
        value = str(value) if ok else value
    if not ok:
        raise ConfigError(f"{where}: {opt.flag} takes {opt.kind.__name__} values, got {value!r}")
    if opt.choices and value not in opt.choices:
        raise ConfigError(f"{where}: {opt.flag} must be one of {', '.join(map(str, opt.choices))}, got {value!r}")
    return value


class Options:
    """The options of one subcommand (see the module docstring)."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser
        self.known: dict[str, Option] = {}
        self.fields: dict[type, dict[str, str]] = {}  # config class -> {field: dest}

    def add(self, flag: str, *, default: Any = None, help: str, group=None, required: bool = False, **kw) -> None:
        """A plain option ``--flag`` (``action="store_true"`` for switches); ``required``: by the
        command line or the preset."""
        dest = flag.lstrip("-").replace("-", "_")
        kind = bool if kw.get("action") == "store_true" else kw.get("type", str)
        choices = tuple(kw["choices"]) if kw.get("choices") else None
        self._register(Option(dest, flag, default, kind, choices=choices, required=required), help, group, kw)

    def add_settings(self, cls: type, *, group=None, only: Iterable[str] | None = None) -> None:
        """The fields of config class ``cls`` (those on the command line, or only ``only``)."""
        names = set(only) if only is not None else None
        for f in settings(cls):
            if not f.metadata["cli"] or (names is not None and f.name not in names):
                continue
            self._add_field(cls, f, group, owners=())

    def add_engine_settings(self, configs: dict[str, type], group) -> None:
        """The union of the fields of the engines' config classes (``configs``: engine name to
        class); a field shared by several engines must have one default (one flag serves them all)."""
        seen: dict[str, tuple[type, dataclasses.Field, list[str]]] = {}
        for name, cls in configs.items():
            for f in settings(cls):
                if not f.metadata["cli"]:
                    continue
                if f.name in seen:
                    first = seen[f.name][1]
                    if f.default != first.default or _kind(cls, f) is not _kind(seen[f.name][0], first):
                        raise AssertionError(f"engine setting {f.name!r} has two defaults: {first.default!r} and "
                                             f"{f.default!r} ({cls.__name__})")
                    seen[f.name][2].append(name)
                else:
                    seen[f.name] = (cls, f, [name])
                self.fields.setdefault(cls, {})[f.name] = f.name
        for cls, f, names in seen.values():
            self._add_field(cls, f, group, owners=tuple(names))

    def _add_field(self, cls: type, f: dataclasses.Field, group, owners: tuple[str, ...]) -> None:
        meta = f.metadata
        flag = "--" + (meta["flag"] or f.name.replace("_", "-"))
        kind = _kind(cls, f)
        dest = flag[2:].replace("-", "_")
        help = meta["help"] + (f" [{', '.join(owners)}]" if owners else "")
        kw: dict[str, Any] = {}
        if kind is bool:
            if f.default:  # a switch that turns a default-on setting off
                flag = "--no-" + flag[2:]
                kw["action"] = "store_false"
            else:
                kw["action"] = "store_true"
        else:
            kw["type"] = kind
            if meta["choices"]:
                kw["choices"] = list(meta["choices"])
            if meta["metavar"]:
                kw["metavar"] = meta["metavar"]
        self.fields.setdefault(cls, {})[f.name] = dest
        self._register(Option(dest, flag, f.default, kind, owners, meta["choices"]), help, group, kw)

    def _register(self, opt: Option, help: str, group, kw: dict) -> None:
        shown = opt.default
        if opt.kind is not bool and shown is not None:
            help += f" (default: {','.join(map(str, shown.sparsities)) if hasattr(shown, 'sparsities') else shown})"
        (group or self.parser).add_argument(opt.flag, dest=opt.dest, default=argparse.SUPPRESS, help=help, **kw)
        self.known[opt.dest] = opt

    # -- resolving ----------------------------------------------------------------------------
    def resolve(self, ns: argparse.Namespace, preset: dict[str, Any], preset_name: str = "preset") -> "Resolved":
        unknown = sorted(set(preset) - set(self.known))
        if unknown:
            raise ConfigError(f"{preset_name}: unknown keys {', '.join(unknown)}")
        cli = {k: v for k, v in vars(ns).items() if k in self.known}
        from_preset = {k: _coerce(self.known[k], v, preset_name) for k, v in preset.items()}
        values = {k: o.default for k, o in self.known.items()} | from_preset | cli
        return Resolved(self, values, set(cli), set(from_preset))


@dataclass
class Resolved:
    """Option values of one command (``values[dest]``), and where each came from."""

    options: Options
    values: dict[str, Any]
    cli: set[str]
    preset: set[str]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def given(self, dest: str) -> bool:
        return dest in self.cli or dest in self.preset

    def config(self, cls: type, **fixed: Any):
        """An instance of config class ``cls`` from the options that set its fields (given ones
        only: the others keep the dataclass defaults), plus ``fixed`` field values."""
        mapping = self.options.fields.get(cls, {})
        kw = {name: self.values[dest] for name, dest in mapping.items() if self.given(dest)}
        return cls(**kw, **fixed)

    def unused(self, cls: type, among: Iterable[type]) -> list[str]:
        """Flags given for the config classes ``among`` that ``cls`` has no field for."""
        mine = set(self.options.fields.get(cls, {}).values())
        theirs = {dest for c in among for dest in self.options.fields.get(c, {}).values()}
        return sorted(self.options.known[d].flag for d in theirs - mine if self.given(d))


MAX_PRESET_BYTES = 1 << 20  # a preset is a page of flags; a larger file is not one
MAX_PRESET_DEPTH = 8
_OPEN = (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken, yaml.FlowMappingStartToken,
         yaml.FlowSequenceStartToken)
_CLOSE = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)


def read_preset(path: str) -> dict[str, Any]:
    """A YAML mapping of flag names (dashes or underscores) to values, read with
    ``yaml.safe_load`` only. A file over 1 MiB, or one with YAML anchors or aliases (which can
    expand a small file into an enormous value), is refused in one line."""
    p = Path(path)
    if not p.is_file():
        raise SparsearchError(f"config file not found: {p}")
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_PRESET_BYTES + 1)
    except OSError as e:
        raise SparsearchError(f"cannot read {p}: {e.strerror or e}") from None
    if len(raw) > MAX_PRESET_BYTES:
        raise SparsearchError(f"{p} is larger than {MAX_PRESET_BYTES >> 20} MiB; a preset is a mapping of flags")
    try:
        text = raw.decode("utf-8")
        depth = 0
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
                raise SparsearchError(f"{p} uses YAML anchors or aliases (&, *); write each value out")
            depth += isinstance(token, _OPEN) - isinstance(token, _CLOSE)
            if depth > MAX_PRESET_DEPTH:
                raise SparsearchError(f"{p} nests values more than {MAX_PRESET_DEPTH} deep; a preset is a mapping of flags")
        data = yaml.safe_load(text) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SparsearchError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SparsearchError(f"{p} must be a mapping of flag names to values")
    if not all(isinstance(k, (str, int, float, bool)) for k in data):
        raise SparsearchError(f"{p} must be a mapping of flag names to values")
    return {str(k).lstrip("-").replace("-", "_"): v for k, v in data.items()}
