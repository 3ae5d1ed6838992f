"""Nothing a user has is lost, no traceback reaches a user, the same seed gives the same run: bad input
through the real CLI, one case (at least) per class of issue 13. Every refusal is exit code 2 with one
line on stderr, and leaves the user's files byte for byte as they were.

Runs: the plug-in sines modality (tests/helpers/sines.py, seconds to train) for run directories; for the
image / audio / video inputs, run folders holding only a resolved recipe config -- every refusal here
comes before a model would be loaded, so they need no weights."""
import errno
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import helpers.sines
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from multidiff import commands, outputs
from multidiff.cli import main
from multidiff.engine.runs import load_recipe, save_resolved
from multidiff.kinds import ModelRef, schemas

from helpers.sines import TINY, write_recipe

ROOT = Path(__file__).parent.parent
V_PREDICTION = {"diffusion": {"timesteps": 50, "prediction": "v"}, "train": {**TINY["train"], "log_every": 1}}

def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def refused(capsys, *args, keep=()) -> str:
    """`multidiff ARGS` exits with 2, says one line, and leaves the files `keep` as they were."""
    before = {p: sha(p) for p in keep}
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"multidiff {args[0]}: error: "), err
    assert {p: sha(p) for p in keep} == before
    return err[0]


def train(recipe, run, *extra) -> int:
    return main(["train", str(recipe), "--out", str(run), *map(str, extra)])


@pytest.fixture(scope="module")
def sines(tmp_path_factory):
    """A trained v-prediction sines run, and inputs for it."""
    tmp = tmp_path_factory.mktemp("sines")
    write_recipe(tmp / "sines.toml", **V_PREDICTION)
    assert train(tmp / "sines.toml", tmp / "run") == 0
    np.save(tmp / "signal.npy", np.sin(np.linspace(0, 6, 32)))
    nan = np.sin(np.linspace(0, 6, 32))
    nan[3] = np.nan
    np.save(tmp / "nan.npy", nan)
    (tmp / "text.npy").write_text("0.1 0.2 0.3\n")
    return tmp


@pytest.fixture
def run_copy(sines, tmp_path):
    shutil.copytree(sines / "run", tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """Run folders of the shipped recipes holding only their resolved config, and user inputs."""
    tmp = tmp_path_factory.mktemp("configs")
    for name, recipe in (("image", "image_digits"), ("vocoder", "diffwave_espeak"), ("audio", "diffwave_sc09_uncond"),
                         ("video", "video_moving_digits")):
        save_resolved(tmp / name, load_recipe(ROOT / "recipes" / recipe, [], schemas())[1])
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp / "photo.png")
    mask = np.zeros((20, 50), np.uint8)
    mask[5:15, 10:30] = 255
    Image.fromarray(mask).save(tmp / "mask_50x20.png")
    sf.write(tmp / "speech.wav", 0.3 * np.sin(np.linspace(0, 300, 22050)), 22050)
    (tmp / "empty.npy").write_bytes(b"")
    np.save(tmp / "no_frames.npy", np.zeros((80, 0), np.float32))
    return tmp


# ---- 1. a refused train leaves the run's config.toml as it was ------------------------------------
def test_a_config_that_does_not_fit_the_weights_is_refused_before_it_is_written(sines, run_copy, capsys):
    config = run_copy / "config.toml"
    err = refused(capsys, "train", sines / "sines.toml", "--out", run_copy, "diffusion.prediction=eps", keep=[config])
    assert "diffusion.prediction 'v' -> 'eps'" in err and "--force train" in err
    err = refused(capsys, "train", sines / "sines.toml", "--out", run_copy, "train.steps=8", keep=[config])
    assert "stopped at step 4" in err and "--resume" in err
    # a stage name that does not exist: refused before the config is written as well
    refused(capsys, "train", sines / "sines.toml", "--out", run_copy, "sample.n=5", "--force", "evaluate",
            keep=[config])


def test_force_train_keeps_the_old_weights_with_their_config(sines, run_copy):
    old_config = (run_copy / "config.toml").read_text()
    assert train(sines / "sines.toml", run_copy, "diffusion.prediction=eps", "--force", "train") == 0
    (kept,) = run_copy.glob("previous_training_*")
    assert (kept / "config.toml").read_text() == old_config and 'prediction = "v"' in old_config
    assert (kept / "checkpoints/step_0000004").is_dir()
    assert 'prediction = "eps"' in (run_copy / "config.toml").read_text()


def test_a_hand_edited_config_is_kept_unless_overwrite_config(sines, run_copy, capsys):
    config = run_copy / "config.toml"
    config.write_text(config.read_text().replace("n = 4", "n = 6"))  # [sample] n, by hand
    err = refused(capsys, "train", sines / "sines.toml", "--out", run_copy, keep=[config])
    assert "edited by hand" in err and "--overwrite-config" in err and "sample.n 6 -> 4" in err
    assert train(sines / "sines.toml", run_copy, "--overwrite-config") == 0
    assert "n = 4" in config.read_text()


def test_a_folder_that_is_not_a_run_is_not_trained_into(sines, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("mine")
    err = refused(capsys, "train", sines / "sines.toml", "--out", tmp_path / "mine", keep=[tmp_path / "mine/notes.txt"])
    assert "not a multidiff run" in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other/config.toml").write_text('title = "someone else\'s"\n')
    err = refused(capsys, "train", sines / "sines.toml", "--out", tmp_path / "other",
                  keep=[tmp_path / "other/config.toml"])
    assert "not written by `multidiff train`" in err


# ---- 2. one train per run directory ------------------------------------------------------------
def test_a_held_run_lock_refuses_naming_its_holder_and_a_dead_holders_lock_does_not(sines, run_copy, capsys):
    lock = run_copy / ".lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)  # another open file: its flock conflicts even in this process
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, b"4242\n", 0)
        ckpt = run_copy / "checkpoints/step_0000004/model.safetensors"
        err = refused(capsys, "train", sines / "sines.toml", "--out", run_copy, "--resume", keep=[ckpt])
        assert "PID 4242" in err and "in use" in err
    finally:
        os.close(fd)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{dead.pid}\n")  # the PID of a process that is gone, not flocked: a stale lock
    assert train(sines / "sines.toml", run_copy) == 0


# ---- 3. outputs never replace inputs or earlier outputs silently -----------------------------------
def test_inpaint_and_vocode_never_write_over_their_input(configs, capsys):
    photo, wav = configs / "photo.png", configs / "speech.wav"
    err = refused(capsys, "inpaint", configs / "image", "--image", photo, "--mask-kind", "center",
                  "--out", configs / "sub/../photo.png", keep=[photo])
    assert "is an input of this command" in err
    refused(capsys, "vocode", configs / "vocoder", "--input", wav, "--out", wav, keep=[wav])
    refused(capsys, "vocode", configs / "vocoder", "--input", wav, "--out", f"{configs}/", "--overwrite", keep=[wav])


def test_sample_refuses_an_existing_file_or_folder_without_overwrite(sines, configs, tmp_path, capsys):
    old = tmp_path / "old.npy"
    np.save(old, np.zeros(3))
    err = refused(capsys, "sample", sines / "run", "--n", 2, "--out", old, keep=[old])
    assert "already exists" in err and "--overwrite" in err
    assert main(["sample", str(sines / "run"), "--n", "2", "--steps", "2", "--out", str(old), "--overwrite"]) == 0
    assert np.load(old).shape == (2, 32)
    (tmp_path / "grid").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "grid/sample_0000.png")
    err = refused(capsys, "sample", configs / "image", "--out", f"{tmp_path}/grid/",
                  keep=[tmp_path / "grid/sample_0000.png"])
    assert "already holds files" in err and "--overwrite" in err


# ---- 4. a location that cannot be written: named before sampling, one line after it -----------------
def test_an_unwritable_out_is_named_before_any_model_is_loaded(sines, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ModelRef, "load", lambda self: pytest.fail("the model was loaded before --out was checked"))
    (tmp_path / "a.txt").write_text("a file")
    err = refused(capsys, "sample", sines / "run", "--out", tmp_path / "a.txt/x.npy", keep=[tmp_path / "a.txt"])
    assert "is a file, not a folder" in err

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(outputs.tempfile, "mkstemp", read_only)
    err = refused(capsys, "sample", sines / "run", "--out", tmp_path / "x.npy")
    assert "Read-only file system" in err and str(tmp_path) in err


def test_a_write_that_fails_after_the_work_is_one_line_naming_the_file(sines, tmp_path, capsys, monkeypatch):
    def denied(path, x):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    monkeypatch.setattr(helpers.sines, "save_npy", denied)
    capsys.readouterr()
    assert main(["sample", str(sines / "run"), "--n", "2", "--steps", "2", "--out", str(tmp_path / "x.npy")]) == 2
    # multidiff's own line, wherever it starts: a server thread left by an earlier test (the app's) may write to
    # stderr meanwhile, possibly onto the same line (a full suite once found no line starting with "multidiff";
    # the assertion shows the whole of stderr should it happen again)
    lines = capsys.readouterr().err.splitlines()
    err = [ln[ln.index("multidiff sample:"):] for ln in lines if "multidiff sample:" in ln]
    want = f"multidiff sample: error: '{tmp_path / 'x.npy'}': Permission denied; check its permissions, or choose "
    assert err == [want + "another path"], lines


def test_a_bug_keeps_its_traceback(sines, tmp_path, monkeypatch):
    def bug(*a, **k):
        raise KeyError("a programming error")
    monkeypatch.setattr(commands, "generate", bug)
    with pytest.raises(KeyError):
        main(["sample", str(sines / "run"), "--out", str(tmp_path / "x.npy")])


# ---- 5. inputs that do not fit, options refused alike ---------------------------------------------
def test_a_mask_of_another_size_is_refused_unless_resize_mask(configs, capsys):
    args = ["inpaint", configs / "image", "--image", configs / "photo.png", "--mask", configs / "mask_50x20.png",
            "--out", configs / "filled.png"]
    err = refused(capsys, *args, keep=[configs / "photo.png", configs / "mask_50x20.png"])
    assert "is 50x20 pixels but image" in err and "is 64x64" in err and "--resize-mask" in err
    err = refused(capsys, *args, "--resize-mask")
    assert "no checkpoint yet" in err  # the mask was taken: this run folder has no weights to fill with


@pytest.mark.parametrize("command, option, value", [
    ("sample", "--steps", "0"), ("inpaint", "--steps", "0"), ("vocode", "--steps", "0"), ("inpaint", "--steps", "-2"),
    ("sample", "--n", "0"), ("sample", "--frames", "0"), ("inpaint", "--frames", "-1"), ("sample", "--fps", "0"),
    ("vocode", "--chunk-frames", "-1"), ("vocode", "--consistency", "-1"), ("sample", "--guidance", "nan"),
    ("sample", "--eta", "inf"), ("sample", "--seconds", "0"), ("sample", "--seconds", "-1"), ("sample", "--seed", "-1"),
])
def test_options_are_refused_alike_by_every_command(configs, capsys, command, option, value):
    run = configs / ("vocoder" if command == "vocode" else "audio")
    inputs = {"sample": [], "inpaint": ["--input", configs / "speech.wav", "--gap", "0.1:0.2"],
              "vocode": ["--input", configs / "speech.wav"]}[command]
    err = refused(capsys, command, run, *inputs, option, value, "--out", configs / "x.wav",
                  keep=[configs / "speech.wav"])
    assert f"argument {option}:" in err and f"multidiff {command} --help" in err


# ---- 6. what used to be tracebacks ------------------------------------------------------------------
def test_empty_or_frameless_mels_and_an_infinite_gap(configs, capsys):
    err = refused(capsys, "vocode", configs / "vocoder", "--input", configs / "empty.npy", "--out", configs / "x.wav",
                  keep=[configs / "empty.npy"])
    assert "'" + str(configs / "empty.npy") + "' is not a NumPy .npy file (it is empty)" in err
    err = refused(capsys, "vocode", configs / "vocoder", "--input", configs / "no_frames.npy", "--out",
                  configs / "x.wav")
    assert "(80, 0)" in err and "frames >= 1" in err
    err = refused(capsys, "inpaint", configs / "vocoder", "--input", configs / "speech.wav", "--gap", "0:inf",
                  "--out", configs / "x.wav", keep=[configs / "speech.wav"])
    assert "finite" in err


@pytest.mark.parametrize("override", ["train.checkpoint_every=0", "train.log_every=0"])
def test_zero_checkpoint_or_log_intervals(sines, tmp_path, capsys, override):
    err = refused(capsys, "train", sines / "sines.toml", "--out", tmp_path / "run", override)
    assert f"train.{override.split('.')[1].split('=')[0]} must be >= 1" in err
    assert not (tmp_path / "run").exists()


# ---- 7. the same seed gives the same run ---------------------------------------------------------------
def losses(run: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_same_seed_gives_the_same_losses_from_fresh_folders(sines, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert train(sines / "sines.toml", tmp_path / name, f"train.seed={seed}", "--skip", "sample") == 0
    assert len(losses(tmp_path / "a")) == 4
    assert losses(tmp_path / "a") == losses(tmp_path / "b")   # the initial weights come from train.seed too
    assert losses(tmp_path / "a") != losses(tmp_path / "c")


# ---- 8. smaller ones ---------------------------------------------------------------------------------
def test_a_text_file_named_npy_gets_no_advice_to_unpickle(sines, tmp_path, capsys):
    err = refused(capsys, "inpaint", sines / "run", "--input", sines / "text.npy", "--gap", "5:9",
                  "--out", tmp_path / "o.npy", keep=[sines / "text.npy"])
    assert "not a NumPy .npy file" in err and "pickle" not in err and "unsafe" not in err


def test_a_nan_input_is_blamed_on_the_input(sines, tmp_path, capsys):
    err = refused(capsys, "inpaint", sines / "run", "--input", sines / "nan.npy", "--gap", "5:9",
                  "--out", tmp_path / "o.npy", keep=[sines / "nan.npy"])
    assert f"'{sines / 'nan.npy'}' holds NaN or inf values" in err and "diverged" not in err


def test_out_names_what_is_written(configs, tmp_path, capsys):
    err = refused(capsys, "sample", configs / "audio", "--n", 3, "--out", tmp_path / "x.wav")
    assert "writes a folder of files" in err and not (tmp_path / "x.wav").exists()
    err = refused(capsys, "sample", configs / "image", "--out", tmp_path / "x.jpg")
    assert "name it 'x.png'" in err and not (tmp_path / "x.jpg").exists()
    err = refused(capsys, "sample", configs / "video", "--out", tmp_path / "x.txt")
    assert "'x.mp4'" in err


def test_an_empty_recipe_is_refused(tmp_path, capsys):
    (tmp_path / "empty.toml").write_text("# nothing yet\n")
    err = refused(capsys, "train", tmp_path / "empty.toml", "--out", tmp_path / "run")
    assert "is empty" in err and not (tmp_path / "run").exists()
