"""Run directories and idempotent stages, shared by every recipe kind.

RUN/config.toml holds the resolved config; RUN/stages/<name>.json marks a finished stage
together with a hash of the config sections it depends on, so re-running a recipe skips
what is done and redoes exactly what a config change made stale (like ESPnet's run.sh
stages, without the numbering by hand).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, build_sections, read_recipe, to_toml
from ..utils import added_key, read_json, write_json, write_text


@dataclass
class RecipeInfo:
    """The [recipe] section. `modality` ("package.module:NAME") names a Modality object from outside
    multidiff for a kind of the user's own (multidiff.kinds.schema_of registers it; docs/extending.md)."""
    kind: str = "image"
    description: str = ""
    modality: str = added_key("")


def section_hash(sections: dict, names) -> str:
    """A hash of the named config sections; "section.key" names one field only (a stage that reads
    just that field does not rerun when the rest of its section changes)."""
    parts = {}
    for n in names:
        sec, _, key = n.partition(".")
        if sec not in sections:
            continue
        if key:
            parts.setdefault(sec, {})[key] = getattr(sections[sec], key)
        else:
            parts[sec] = sections[sec]
    return hashlib.sha256(to_toml(parts, identity=True).encode()).hexdigest()[:16]


class Run:
    def __init__(self, run_dir: Path, sections: dict, log=print, main: bool = True):
        self.dir, self.sections, self.main = Path(run_dir), sections, main
        self.log = log if main else (lambda *a: None)

    def __getitem__(self, name):
        return self.sections[name]

    def is_done(self, name: str, depends_on) -> bool:
        """Stage `name` finished with the config sections it depends on as they are now."""
        marker = self.dir / "stages" / f"{name}.json"
        return marker.exists() and read_json(marker).get("config_hash") == section_hash(self.sections, depends_on)

    def stage(self, name: str, depends_on, fn, force: bool = False):
        """Run `fn()` unless stage `name` already finished with the same config sections; returns
        the stage's summary dict (what fn returned, or what was recorded)."""
        marker = self.dir / "stages" / f"{name}.json"
        h = section_hash(self.sections, depends_on)
        if marker.exists() and not force:
            rec = read_json(marker)
            if rec.get("config_hash") == h:
                self.log(f"[{name}] done already ({marker}); skipping")
                return rec.get("summary", {})
            self.log(f"[{name}] config changed since it ran; running it again")
        self.log(f"[{name}] running")
        t0 = time.time()
        summary = fn() or {}
        if self.main:
            write_json(marker, {"config_hash": h, "seconds": round(time.time() - t0, 1), "summary": summary})
        return summary


def load_recipe(path, overrides, schemas) -> tuple[Path, dict]:
    """Read a recipe and build its sections with the schema of its [recipe] kind: `schemas` maps kinds to
    their sections, or is a function of the [recipe] section that returns them (or raises ConfigError)."""
    file, tables = read_recipe(path, overrides)
    info = build_sections({"recipe": tables.get("recipe", {})}, {"recipe": RecipeInfo}, file)["recipe"]
    if callable(schemas):
        try:
            schema = schemas(info)
        except ConfigError as e:
            raise ConfigError(f"{file}: {e}") from None
    elif info.kind in schemas:
        schema = schemas[info.kind]
    else:
        raise ConfigError(f"{file}: recipe.kind = {info.kind!r} is not one of {sorted(schemas)}")
    try:
        sections = build_sections(tables, {"recipe": RecipeInfo, **schema}, file)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{file}: {e}") from None
    return file, sections


# the sha256 of the config.toml multidiff wrote last, beside it: a hand edit since then shows
CONFIG_RECORD = ".config.sha256"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def save_resolved(run_dir: Path, sections: dict) -> None:
    text = to_toml(sections)
    write_text(Path(run_dir) / "config.toml", text)
    write_text(Path(run_dir) / CONFIG_RECORD, text_hash(text) + "\n")


def recorded_config_hash(run_dir) -> str | None:
    """What save_resolved recorded of RUN/config.toml (None for runs made before the record existed)."""
    record = Path(run_dir) / CONFIG_RECORD
    return record.read_text().strip() if record.is_file() else None


def _run_config(run_dir) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"'{run_dir}' is not a multidiff run directory (no config.toml); give the --out folder "
                          "of a `multidiff train` run")
    return run_dir / "config.toml"


def load_run(run_dir, schemas: dict) -> dict:
    """The resolved config of an existing run directory (any kind in `schemas`)."""
    return load_recipe(_run_config(run_dir), [], schemas)[1]


def load_sections(run_dir, schema: dict) -> dict:
    """The resolved config of an existing run directory of one kind, whose sections `schema` names."""
    file = _run_config(run_dir)
    _, tables = read_recipe(file, [])
    try:
        return build_sections(tables, {"recipe": RecipeInfo, **schema}, file)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{file}: {e}") from None
