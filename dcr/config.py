"""The one config system of every `dcr` command: typed dataclasses whose fields carry help, choices and a
topic, read from YAML/JSON (`--config`), overridden by flags, validated, and printable as resolved.

A command's settings are a `Settings` dataclass built from `option(...)` fields. `add_arguments` makes one
documented flag per field, grouped by topic in `--help`; `build` layers defaults, a preset, the file and
the flags; `to_yaml` prints the resolved settings (`--print-config`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value or file is invalid."""


def option(default: Any, help: str, choices: tuple[str, ...] | None = None, topic: str = "general") -> Any:
    """A settings field with its help text, allowed values and the `--help` topic it is listed under."""
    meta = {"help": help, "choices": choices, "topic": topic}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Settings:
    """Base of every command's settings: `validate` checks choices and the subclass's `checks()`."""

    def checks(self) -> dict[str, bool]:
        """Named conditions every usable value meets (a subclass extends its parent's)."""
        return {}

    def validate(self) -> Settings:
        """Raise :class:`ConfigError` for values no run could use; return self."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name} must be one of {list(choices)}, got {getattr(self, f.name)!r}")
        bad = [name for name, ok in self.checks().items() if not ok]
        if bad:
            raise ConfigError("invalid value(s): " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))
        return self


def _kind(tp: Any) -> str:
    """Coarse type of a field annotation: bool, int, float, str, list, dict or layer (int | float)."""
    args = {a for a in typing.get_args(tp) if a is not type(None)}
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if args == {int, float}:
            return "layer"
        (tp,) = args
    if typing.get_origin(tp) is list:
        return "list"
    if typing.get_origin(tp) is dict:
        return "dict"
    return {bool: "bool", int: "int", float: "float", str: "str"}[tp]


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Check and convert one value (from a file or a flag) to the field's type."""
    hints = typing.get_type_hints(cls)
    kind = _kind(hints[name])
    optional = type(None) in typing.get_args(hints[name])
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} may not be empty")
    try:
        if kind == "bool":
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind == "layer":
            if isinstance(value, str):
                return float(value) if any(c in value for c in ".eE") else int(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            return value
        if kind == "list":
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise TypeError
            parts = [part.strip() for x in items for part in str(x).split(",")]
            return [_list_item(hints[name], part) for part in parts if part] or None
        if kind == "dict":
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TypeError
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot use {value!r} as {kind}") from None


def _list_item(tp: Any, text: str) -> Any:
    """One list element as the list's element type (int lists, e.g. seeds; str otherwise)."""
    (inner,) = {a for a in typing.get_args(tp) if a is not type(None)} if typing.get_origin(tp) is not list else (tp,)
    element = typing.get_args(inner)[0] if typing.get_args(inner) else str
    return int(text) if element is int else text


def from_mapping(cls: type, values: dict[str, Any]) -> Any:
    """Build ``cls`` from a mapping, rejecting unknown keys and converting values to the field types."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; valid settings: {sorted(names)}")
    return cls(**{k: _coerce(cls, k, v) for k, v in values.items()})


def read_file(path: str | Path) -> dict[str, Any]:
    """Settings from a YAML (.yaml/.yml) or JSON file, as a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # optional: pyyaml is in the train extra
        except ImportError as err:
            raise ConfigError("YAML configs need pyyaml (pip install pyyaml), or use a JSON file") from err
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
    elif path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from None
    else:
        raise ConfigError(f"config file {path} must end in .yaml, .yml or .json")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of setting: value")
    return values


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per field of ``cls``, documented with the field's help, choices and default and listed
    under its topic; lists take several values (spaces or commas), booleans take --x / --no-x."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        kind = _kind(hints[f.name])
        if kind == "dict":
            continue  # sections (the pipeline's per-stage overrides) come from the --config file only
        topic = f.metadata.get("topic", "general")
        group = groups.get(topic) or groups.setdefault(topic, parser.add_argument_group(topic))
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        help_text = f.metadata["help"] + ("" if default is None else f" (default: {_show(default)})")
        common = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if kind == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind == "list":
            group.add_argument(flag, nargs="+", metavar="NAME", **common)
        else:
            metavar = "L" if kind == "layer" else kind.upper()
            choices = f.metadata.get("choices")
            group.add_argument(flag, type=str, metavar="{" + ",".join(choices) + "}" if choices else metavar, **common)


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def build(
    cls: type, config_file: str | Path | None, overrides: dict[str, Any], preset: dict[str, Any] | None = None
) -> Any:
    """Defaults, then a preset, then the config file, then explicit overrides; validated."""
    values = dict(preset or {})
    values.update(read_file(config_file) if config_file else {})
    values.update(overrides)
    return from_mapping(cls, values).validate()


def to_yaml(config: Any) -> str:
    """The resolved settings as YAML (`--print-config`): a file `--config` reads back unchanged."""
    try:
        import yaml
    except ImportError as err:
        raise ConfigError("--print-config writes YAML and needs pyyaml (pip install pyyaml)") from err
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
