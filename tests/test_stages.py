"""The stages a user controls: `multidiff train RECIPE --stage NAME / --force NAME / --skip NAME`, on a
small run of the plug-in sines modality (tests/helpers/sines.py: seconds per run)."""
from pathlib import Path

import pytest

from multidiff.cli import main

from helpers.sines import write_recipe

def train(recipe: Path, run: Path, *extra) -> int:
    return main(["train", str(recipe), "--out", str(run), *map(str, extra)])


@pytest.fixture
def recipe(tmp_path) -> Path:
    return write_recipe(tmp_path / "sines.toml")


def test_skip_leaves_a_stage_out_and_stage_runs_only_the_named_one(recipe, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(recipe, run, "--skip", "sample") == 0
    assert (run / "stages/train.json").is_file() and not (run / "samples/final.npy").exists()
    capsys.readouterr()
    assert train(recipe, run, "--stage", "sample") == 0
    out = capsys.readouterr().out
    assert (run / "samples/final.npy").is_file() and "[train] running" not in out and "[prepare]" not in out


def test_stage_refuses_when_an_earlier_stage_has_not_run(recipe, tmp_path, capsys):
    assert train(recipe, tmp_path / "run", "--stage", "sample") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage 'prepare' has not run with this config yet" in err[0]
    assert not (tmp_path / "run/checkpoints").exists()


def test_unknown_stage_names_the_stages(recipe, tmp_path, capsys):
    assert train(recipe, tmp_path / "run", "--force", "evaluate") == 2
    assert "has no stage 'evaluate'; its stages are: prepare, train, sample" in capsys.readouterr().err


def test_force_train_keeps_the_old_weights_and_redoes_what_follows(recipe, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(recipe, run) == 0
    old = (run / "checkpoints/step_0000004/model.safetensors").read_bytes()
    capsys.readouterr()
    assert train(recipe, run, "--force", "train") == 0
    out = capsys.readouterr().out
    kept = list(run.glob("previous_training_*"))
    assert len(kept) == 1 and (kept[0] / "checkpoints/step_0000004/model.safetensors").read_bytes() == old
    assert "[prepare] done already" in out and "[train] running" in out and "[sample] running" in out
    # the same seed retrains the same weights: the run is reproducible
    assert (run / "checkpoints/step_0000004/model.safetensors").read_bytes() == old
