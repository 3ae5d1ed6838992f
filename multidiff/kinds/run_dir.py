"""What `multidiff train` checks before it writes a run directory's config.toml: nothing the user has
is replaced behind their back, and the config never stops describing the weights beside it.

  * RUN/config.toml is replaced only when multidiff wrote it and nobody edited it since (its hash is
    recorded beside it, engine/runs.py); a hand-edited or foreign config.toml is kept unless
    --overwrite-config;
  * a config that changes what the weights RUN already holds were trained on (a kind's
    weights_identity: model, data, diffusion, ...) is refused before anything is written -- a
    `multidiff sample RUN` afterwards would read the new config with the old weights -- unless the
    stages that train are forced (--force train keeps the old weights aside);
  * a folder that is not a run and already holds files is not trained into.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..engine.checkpoint import latest_checkpoint, read_state
from ..engine.config import ConfigError, to_toml
from ..engine.run_lock import LOCK_FILE
from ..engine.runs import CONFIG_RECORD, load_recipe, recorded_config_hash, text_hash

OVERWRITE_CONFIG = "--overwrite-config"
WEIGHT_SECTIONS = ("data", "model", "diffusion")  # named first when a change is reported


def retrains(force: list[str]) -> bool:
    """--force NAME reruns NAME and every stage after it: from prepare or a train stage, new weights."""
    return any(n == "prepare" or n.startswith("train") for n in force)


def check_run_dir(run_dir, kind, sections: dict, schemas, *, retrain: bool = False, resume: bool = False,
                  overwrite_config: bool = False) -> bool:
    """Refuse (ConfigError naming the fix) to write `sections` as run_dir's config.toml; `schemas` reads
    the config already there (engine.runs.load_recipe), `kind` is the new config's kind, `resume` and
    `retrain` what the command does with a training that stopped or finished. True: the write will
    replace a config.toml that says something else."""
    run_dir = Path(run_dir)
    file = run_dir / "config.toml"
    if not file.is_file():
        others = sorted(p.name for p in run_dir.iterdir() if p.name not in (LOCK_FILE, CONFIG_RECORD)) \
            if run_dir.is_dir() else []
        if others:
            listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise ConfigError(f"--out '{run_dir}' holds files ({listed}) but no config.toml: it is not a multidiff "
                              "run. Give a new or empty --out folder")
        return False
    old_text, new_text = file.read_text(), to_toml(sections)
    if old_text == new_text:
        return False
    old = _read(file, schemas)
    if not _written_by_multidiff(run_dir, old_text, old):
        if not overwrite_config:
            raise ConfigError(f"'{file}' was edited by hand or not written by `multidiff train`, and this config "
                              f"differs from it{_changes(old, sections)}: it is kept. Pass {OVERWRITE_CONFIG} to "
                              "replace it, or give another --out")
        old = None  # an edited config says nothing sure about the weights: the trainer checks their fingerprint
    if retrain or not has_weights(run_dir):
        return True
    if old is not None and (old["recipe"].kind != sections["recipe"].kind
                            or kind.weights_identity(old) != kind.weights_identity(sections)):
        raise ConfigError(f"'{run_dir}' holds weights trained with another config{_changes(old, sections)}; its "
                          "config.toml is kept. Give another --out, or pass --force train to train new weights (the "
                          "old ones are kept in RUN/previous_training_*/)")
    last = latest_checkpoint(run_dir / "checkpoints")
    step = read_state(last).get("step", 0) if last is not None else None
    if step is not None and not resume and "train" in sections and step < sections["train"].steps:
        raise ConfigError(f"'{run_dir}' holds a training stopped at step {step}, and this config asks for "
                          f"{sections['train'].steps} steps: pass --resume to continue it, or --out another directory "
                          "(its config.toml is kept)")
    return True


def has_weights(run_dir: Path) -> bool:
    """A checkpoint in RUN/checkpoints or in a model's own folder inside the run (RUN/<name>/config.toml)."""
    if latest_checkpoint(run_dir / "checkpoints") is not None:
        return True
    return any(latest_checkpoint(d / "checkpoints") is not None
               for d in run_dir.iterdir() if (d / "config.toml").is_file())


def _read(file: Path, schemas) -> dict | None:
    try:
        return load_recipe(file, [], schemas)[1]
    except ConfigError:
        return None  # not a config of a kind multidiff knows: someone else's


def _written_by_multidiff(run_dir: Path, text: str, sections: dict | None) -> bool:
    recorded = recorded_config_hash(run_dir)
    if recorded is not None:
        return recorded == text_hash(text)
    return sections is not None and to_toml(sections) == text  # a run from before the record: as written


def _changes(old: dict | None, new: dict) -> str:
    """' (diffusion.prediction 'v' -> 'eps', ...)': what the new config changes, weight sections first."""
    if old is None:
        return ""
    names = [n for n in WEIGHT_SECTIONS if n in new] + [n for n in new if n not in WEIGHT_SECTIONS]
    changes = []
    for name in names:
        if name not in old or not dataclasses.is_dataclass(new[name]):
            continue
        for key, value in dataclasses.asdict(new[name]).items():
            before = getattr(old[name], key, None)
            if before != value:
                changes.append(f"{name}.{key} {before!r} -> {value!r}")
    if not changes:
        return ""
    more = f", and {len(changes) - 4} more" if len(changes) > 4 else ""
    return f" ({', '.join(changes[:4])}{more})"
