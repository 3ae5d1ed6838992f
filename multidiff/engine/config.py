"""Recipe configs: `config.toml` -> dataclasses, `section.key=value` overrides, strict checks.

A recipe is data, not code. Every section maps to one dataclass owned by the module that
uses it (data, model, diffusion, train, ...); this file only knows how to fill dataclasses
from TOML tables and how to complain usefully.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path

from ..errors import UserError
from ..utils import ADDED_KEY


class ConfigError(UserError):
    pass


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value, tp, where: str):
    """Check a TOML value against a dataclass field type (int, float, bool, str, list[...])."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where} expects {tp}, got {value!r}")
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (typing.Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} expects a list of {_type_name(item)}, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is typing.Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} expects true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} expects an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} expects a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} expects a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {tp}")


def from_dict(cls, table: dict, section: str):
    """Fill dataclass `cls` from a TOML table; unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                          f"valid keys in [{section}]: {', '.join(names)}")
    return cls(**{k: _coerce(v, hints[k], f"{section}.{k}") for k, v in table.items()})


def parse_override(text: str) -> tuple[str, str, object]:
    """`section.key=value`, the value read as a TOML value (bare words are strings)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.steps=500)")
    lhs, raw = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def read_recipe(path: str | os.PathLike, overrides: list[str] = ()) -> tuple[Path, dict]:
    """Read `<recipe>/config.toml` (or a .toml file) and apply overrides. Returns (file, tables)."""
    p = Path(path)
    file = p / "config.toml" if p.is_dir() else p
    if not file.is_file():
        raise ConfigError(f"no recipe config at '{file}': give a recipe folder holding config.toml "
                          f"(e.g. recipes/image_digits) or a .toml file")
    try:
        tables = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"'{file}' is not valid TOML: {e}") from None
    if not tables:  # all defaults would silently train a 2,000-step digits model
        raise ConfigError(f"'{file}' is empty: a recipe sets at least its [recipe] kind; start from one of "
                          "recipes/*/config.toml")
    for ov in overrides:
        section, key, value = parse_override(ov)
        tables.setdefault(section, {})[key] = value
    return file, tables


def build_sections(tables: dict, schema: dict[str, type], file="config") -> dict:
    """One dataclass per section named in `schema`; sections not in the schema are errors."""
    unknown = sorted(set(tables) - set(schema))
    if unknown:
        raise ConfigError(f"{file}: unknown section(s) {', '.join(f'[{s}]' for s in unknown)}; "
                          f"valid sections: {', '.join(f'[{s}]' for s in schema)}")
    out = {}
    for name, cls in schema.items():
        table = tables.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: [{name}] must be a table of key = value pairs")
        out[name] = from_dict(cls, table, name)
    return out


def _omitted(obj, name: str, value) -> bool:
    f = {f.name: f for f in dataclasses.fields(obj)}.get(name)
    if f is None or not f.metadata.get(ADDED_KEY, False):
        return False
    return value == (f.default_factory() if f.default is dataclasses.MISSING else f.default)


def to_toml(sections: dict, identity: bool = False) -> str:
    """Write resolved dataclass sections back as TOML (flat tables of scalars and lists).
    identity=True: the text a run's hashes are taken of (`added_key` fields left out at their default)."""

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if v is None:
            raise ConfigError("None cannot be written to TOML")
        raise ConfigError(f"cannot write {v!r} to TOML")

    lines = []
    for name, obj in sections.items():
        d = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
        if identity and dataclasses.is_dataclass(obj):
            d = {k: v for k, v in d.items() if not _omitted(obj, k, v)}
        lines.append(f"[{name}]")
        lines += [f"{k} = {val(v)}" for k, v in d.items() if v is not None]
        lines.append("")
    return "\n".join(lines)
