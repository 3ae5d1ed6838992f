"""Image recipes end to end through the real CLI, on tiny models and real data."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multidiff.cli import main
from multidiff.data.image import ImageData, build_image_dataset, save_image_grid
from multidiff.engine.runs import load_run
from multidiff.evaluation.inpainting import InpaintConfig
from multidiff.kinds import schema_of
from multidiff.modalities.student import student_completion

from helpers.fake_data import write_fake_cifar10

ROOT = Path(__file__).parent.parent
TINY = ["model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
        "train.steps=4", "train.batch_size=16", "train.checkpoint_every=2", "train.warmup_steps=1",
        "train.log_every=1", "sample.n=8", "sample.steps=3"]


def cli(*args):
    assert main([str(a) for a in args]) == 0


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits")
    cli("train", ROOT / "recipes/image_digits", "--out", run, *TINY, "eval.n=20", "eval.batch=10",
        'eval.table=["ddim:4", "dpmpp_2m:3"]', "eval.classifier_epochs=1")
    return run


def test_image_digits_recipe_runs_every_stage(digits_run, capsys):
    for f in ("config.toml", "metrics.jsonl", "loss.png", "eval.json", "eval.md", "samples/final.png",
              "checkpoints/step_0000004/ema.safetensors"):
        assert (digits_run / f).exists(), f
    ev = json.loads((digits_run / "eval.json").read_text())
    assert [(r["sampler"], r["steps"]) for r in ev["rows"]] == [("ddim", 4), ("dpmpp_2m", 3)]
    # the reference row reads real held-out digits (measured: FD 0.09, 9 of 10 classes with a 1-epoch classifier);
    # a 4-step model's samples are far from them (FD 36-69), and the metric must see it
    real = ev["real_test_vs_train"]
    assert real["coverage"] >= 0.8 and all(r["fd"] > 20 * real["fd"] for r in ev["rows"])
    assert ev["classifier_test_accuracy"] > 0.5
    assert Image.open(digits_run / "samples/final.png").size[0] > 16
    # re-running skips every finished stage and changes nothing
    before = (digits_run / "eval.json").read_text()
    capsys.readouterr()
    cli("train", ROOT / "recipes/image_digits", "--out", digits_run, *TINY, "eval.n=20", "eval.batch=10",
        'eval.table=["ddim:4", "dpmpp_2m:3"]', "eval.classifier_epochs=1")
    out = capsys.readouterr().out
    assert out.count("done already") == 4 and (digits_run / "eval.json").read_text() == before


def test_eval_repeats_averages_draws_of_successive_seeds(digits_run, tmp_path, capsys):
    """eval.repeats = 3: each row is the mean of three draws (seeds seed, seed + 1, seed + 2), each what a
    single-seed evaluation at that seed scores, with the FD's spread (fd_sd, shown in eval.md); 0 is refused."""
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    args = ["train", ROOT / "recipes/image_digits", "--out", run, *TINY, "eval.n=20", "eval.batch=10",
            'eval.table=["ddim:4"]', "eval.classifier_epochs=1", "--stage", "evaluate", "--force", "evaluate",
            "--overwrite-config"]
    single = []
    for seed in (2, 3, 4):
        cli(*args, f"eval.seed={seed}")
        single.append(json.loads((run / "eval.json").read_text())["rows"][0])
    cli(*args, "eval.seed=2", "eval.repeats=3")
    row = json.loads((run / "eval.json").read_text())["rows"][0]
    fds = [r["fd"] for r in single]
    assert len(set(fds)) == 3 and row["draws"] == 3 and "fd_sd" not in single[0]
    assert row["fd"] == pytest.approx(np.mean(fds)) and row["fd_sd"] == pytest.approx(np.std(fds, ddof=1))
    assert row["coverage"] == pytest.approx(np.mean([r["coverage"] for r in single]))
    assert [d["fd"] for d in row["by_draw"]] == pytest.approx(fds)
    assert "| fd sd |" in (run / "eval.md").read_text()
    capsys.readouterr()
    assert main([str(a) for a in args + ["eval.repeats=0"]]) == 2
    assert "eval.repeats must be a whole number >= 1" in capsys.readouterr().err


def test_longer_training_needs_resume_and_continues(digits_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    args = ["train", ROOT / "recipes/image_digits", "--out", run, *TINY, "train.steps=6", "eval.n=20",
            "eval.batch=10", 'eval.table=["ddim:4"]', "eval.classifier_epochs=1"]
    assert main([str(a) for a in args]) == 2  # stopped at step 4 of 6: refuses to silently restart
    cli(*args, "--resume")
    assert (run / "checkpoints/step_0000006").is_dir()


def test_sample_command(digits_run, tmp_path):
    cli("sample", digits_run, "--n", 10, "--steps", 3, "--out", tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").size == (10 * 18 + 2, 18 + 2)
    cli("sample", digits_run, "--n", 2, "--class", 3, "--guidance", 2.0, "--sampler", "ddim", "--steps", 3,
        "--out", f"{tmp_path}/each/")
    assert sorted(p.name for p in (tmp_path / "each").iterdir()) == ["sample_0000.png", "sample_0001.png"]
    assert main(["sample", str(digits_run), "--class", "12", "--out", str(tmp_path / "x.png")]) == 2


def test_cifar10_recipe_on_the_real_layout(tmp_path):
    write_fake_cifar10(tmp_path / "data", n_per_batch=8)
    cli("train", ROOT / "recipes/cifar10", "--out", tmp_path / "run", f"data.root={tmp_path / 'data'}", *TINY,
        "model.attention_resolutions=[16]", "train.num_workers=0", "eval.n=4", "eval.batch=4",
        'eval.table=["ddim:2"]')
    assert (tmp_path / "run/samples/final.png").exists()
    assert "no feature extractor" in (tmp_path / "run/eval.json").read_text()


def test_cifar10_recipe_without_data_says_what_to_download(tmp_path, capsys):
    assert main(["train", str(ROOT / "recipes/cifar10"), "--out", str(tmp_path / "run"),
                 f"data.root={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err
    assert "cifar-10-python.tar.gz" in err and "cifar-10-batches-py" in err


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """image_inpainting_folder on a user-style folder: real digits written as RGB PNGs in class folders."""
    root = tmp_path_factory.mktemp("images")
    ds = build_image_dataset(ImageData(size=16), "train")
    for i in range(60):
        x, y = ds[i]
        save_image_grid(x.expand(3, -1, -1), root / f"class_{y}" / f"img_{i}.png", padding=0)
    run = tmp_path_factory.mktemp("folder_run")
    cli("train", ROOT / "recipes/image_inpainting_folder", "--out", run, *folder_settings(root))
    return run, root


def folder_settings(root):
    return [f"data.root={root}", "data.size=16", "model.image_size=16", *TINY, "model.attention_resolutions=[8]",
            "train.num_workers=0", "inpaint.eval_n=3", "inpaint.repaint_steps=6", "inpaint.jump_length=2",
            "inpaint.jump_n_sample=2", "inpaint.replace_steps=4", "inpaint.reconstruction_steps=3",
            "inpaint.conditioned_steps=3", "inpaint.ssim_window=7"]


def test_inpainting_recipe_compares_four_methods(folder_run):
    run, _ = folder_run
    ev = json.loads((run / "eval.json").read_text())
    assert {(r["mask"], r["method"]) for r in ev["rows"]} == {
        (m, k) for m in ("center", "box", "strokes", "left") for k in ("repaint", "replace", "reconstruction", "conditioned")}
    assert all(np.isfinite(r["psnr_filled"]) for r in ev["rows"])
    assert (run / "samples/inpainting.png").exists()
    assert (run / "unconditional/config.toml").exists() and (run / "conditioned/checkpoints").is_dir()


def test_a_few_step_student_of_the_unconditional_model_joins_the_inpainting_table(folder_run, tmp_path, capsys):
    run, root = folder_run
    shutil.copytree(run, tmp_path / "run")  # (the module's run keeps its table for the other tests)
    run = tmp_path / "run"
    cli("distill", run, "--steps", 2, "--out", tmp_path / "student", "distill.start_steps=4", "distill.round_steps=2",
        "--skip", "evaluate")
    cli("train", ROOT / "recipes/image_inpainting_folder", "--out", run, *folder_settings(root), "--force", "evaluate",
        f'inpaint.students=["{tmp_path / "student"}"]', 'inpaint.methods=["replace"]')
    rows = json.loads((run / "eval.json").read_text())["rows"]
    student = "progressive student, 2 steps"
    assert {(r["mask"], r["model"], r["method"]) for r in rows} == {
        (m, *k) for m in ("center", "box", "strokes", "left") for k in (
            ("unconditional", "replace"), *((student, s) for s in ("replace", "reconstruction", "ddnm", "pigdm")))}
    calls = {(r["model"], r["method"]): (r["nfe"], r["nfe_backward"]) for r in rows if r["mask"] == "box"}
    # counted model calls: the student's 2 steps, not the teacher's 4 (reconstruction and Pi-GDM differentiate each)
    assert calls[("unconditional", "replace")] == (4, 0)
    assert calls[(student, "replace")] == calls[(student, "ddnm")] == (2, 0)
    assert calls[(student, "reconstruction")] == calls[(student, "pigdm")] == (2, 2)
    assert all(np.isfinite(r["psnr_filled"]) for r in rows)
    # every method on the student's own deterministic jumps (DDNM's eta 0.85 is the teacher's)
    cfg = student_completion(InpaintConfig(), load_run(tmp_path / "student", schema_of))
    assert (cfg.ddnm_sampler, cfg.ddnm_steps, cfg.ddnm_eta, cfg.reconstruction_steps) == ("ddim", 2, 0.0, 2)
    # a folder that is not a student of this run's unconditional model: one line naming it
    assert main([str(a) for a in ("train", ROOT / "recipes/image_inpainting_folder", "--out", run, *folder_settings(root),
                                  "--force", "evaluate", f'inpaint.students=["{run / "conditioned"}"]')]) == 2
    assert "is not a distilled student of" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["repaint", "replace", "reconstruction", "conditioned"])
def test_inpaint_command_keeps_the_known_pixels(folder_run, tmp_path, method):
    run, root = folder_run
    image = next(root.glob("class_*/img_*.png"))
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255  # white = fill
    Image.fromarray(mask).save(tmp_path / "mask.png")
    cli("inpaint", run, "--image", image, "--mask", tmp_path / "mask.png", "--method", method, "--steps", 3,
        "--out", tmp_path / "out.png")
    out = np.asarray(Image.open(tmp_path / "out.png").convert("RGB")).astype(int)
    src = np.asarray(Image.open(image).convert("RGB")).astype(int)
    keep = mask == 0
    assert np.abs(out[keep] - src[keep]).max() <= 1  # known pixels survive (up to 8-bit rounding)
