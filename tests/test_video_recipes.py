"""Video recipes end to end through the real CLI: Moving-digits built by the recipe, tiny 3-D U-Nets,
generation (MP4 + GIF), prediction / interpolation with a frame-conditioned model and with
replacement sampling, and the errors a user meets. The default video recipe trains one
frame-conditioned model (MCVD-style, known-frame patterns none / prefix / ends) for all of these;
its long clips and stills: tests/test_video_long.py."""
import json
from pathlib import Path

import pytest
import torch

from multidiff.cli import main
from multidiff.data.image import save_image_grid
from multidiff.data.video import read_video
from multidiff.kinds import schemas
from multidiff.engine.runs import load_recipe
from multidiff.engine.config import to_toml

ROOT = Path(__file__).parent.parent


def tiny(tmp: Path) -> list[str]:
    """A recipe small enough for a test: 16 px clips of 4 frames, a 2-level 16-channel U-Net."""
    return [f"data.root={tmp / 'clips'}", f"data.cache_dir={tmp / 'cache'}", "prep.n=20", "prep.n_test=10",
            "prep.frames=6", "prep.digit_size=8", "data.frames=4", "data.size=16", "model.image_size=16",
            "model.frames=4", "model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]",
            "model.attention_resolutions=[8]", "train.steps=3", "train.batch_size=4", "train.checkpoint_every=3",
            "train.warmup_steps=1", "train.log_every=1", "train.sample_every=0", "sample.n=4", "sample.steps=2",
            "eval.classifier_epochs=1", 'predict.tasks=["prefix:2", "ends"]', "predict.eval_n=10",
            "predict.conditioned_steps=2"]


def cli(*args):
    assert main([str(a) for a in args]) == 0


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("video")
    cli("train", ROOT / "recipes/video_moving_digits", "--out", tmp / "run", *tiny(tmp), "eval.n=10",
        "eval.batch=10", 'eval.table=["dpmpp_2m:2"]', "eval.classifier_epochs=30")
    return tmp


def test_video_recipe_builds_its_data_and_runs_every_stage(video_run, capsys):
    run = video_run / "run"
    assert len(list((video_run / "clips/train").rglob("*.mp4"))) == 20       # built by the prepare stage
    for f in ("eval.json", "eval.md", "loss.png", "samples/final/grid.mp4", "samples/final/grid.gif",
              "samples/final/frames.png", "samples/final/clip_0003.mp4", "eval/frame_classifier.safetensors",
              "predict.json", "predict.md", "samples/predict.png"):
        assert (run / f).is_file(), f
    assert read_video(run / "samples/final/clip_0000.mp4", None, 1).shape == (1, 4, 16, 16)
    ev = json.loads((run / "eval.json").read_text())
    row = ev["rows"][0]
    for key in ("fd", "confidence", "coverage", "identity_agreement", "label_accuracy", "speed", "jerk"):
        assert key in row and key in ev["real_test"], key
    # the frame classifier reads real held-out clips well above chance (measured 0.55 on 2 train clips per class),
    # and real clips glide (speed 0.75 px/frame) while a 3-step model's clips stand nearly still (0.02)
    real = ev["real_test"]
    assert real["label_accuracy"] > 0.3 and real["speed"] > 0.2 and row["speed"] < 0.5 * real["speed"]
    assert row["seconds_per_clip"] > 0
    # the same model predicts and interpolates (the predict stage, scored like the prediction recipe)
    pred = json.loads((run / "predict.json").read_text())
    assert [(r["task"], r["method"]) for r in pred["rows"]] == [("prefix:2", "conditioned"), ("ends", "conditioned")]
    # re-running skips all five stages (the opt-in long_video stage runs only when asked for)
    capsys.readouterr()
    cli("train", ROOT / "recipes/video_moving_digits", "--out", run, *tiny(video_run), "eval.n=10", "eval.batch=10",
        'eval.table=["dpmpp_2m:2"]', "eval.classifier_epochs=30")
    out = capsys.readouterr().out
    assert out.count("done already") == 5 and "long_video" not in out


def test_sample_cli_writes_longer_clips_than_trained(video_run, tmp_path):
    out = tmp_path / "clips/"
    cli("sample", video_run / "run", "--n", 2, "--frames", 6, "--steps", 2, "--class", 3, "--out", str(out) + "/")
    for name in ("clip_0000.mp4", "clip_0001.gif", "grid.mp4", "grid.gif", "frames.png"):
        assert (out / name).is_file(), name
    assert read_video(out / "clip_0001.gif", None, 1).shape[1] == 6


def test_inpaint_cli_keeps_the_known_frames(video_run, tmp_path):
    src = sorted((video_run / "clips/test").rglob("*.mp4"))[0]
    out = tmp_path / "pred.gif"  # GIF: lossless for grayscale, so kept frames compare exactly
    cli("inpaint", video_run / "run", "--input", src, "--known-frames", "0:2", "--steps", 3, "--out", out)
    got, inp = read_video(out, 16, 1), read_video(src, 16, 1, max_frames=4)
    assert got.shape == (1, 4, 16, 16)
    assert torch.allclose(got[:, :2], inp[:, :2], atol=1.01 / 127.5)


def test_a_video_student_with_a_gan_term_on_the_3d_unets_features(video_run, tmp_path):
    """distill.adversarial on the video kind: the head reads the 3-D U-Net's middle block on clips with their
    known-frame channels and labels, trains beside the student, and the student is an ordinary video run."""
    cli("distill", video_run / "run", "--steps", 2, "--out", tmp_path / "s2", "distill.start_steps=4",
        "distill.round_steps=3", "distill.adversarial=0.5", "train.checkpoint_every=3", "--skip", "predict")
    rows = [json.loads(ln) for ln in (tmp_path / "s2/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["d_loss"] > 0 and r["g_weight"] > 0 for r in rows)
    ev = json.loads((tmp_path / "s2/eval.json").read_text())
    assert [(r["sampler"], r["steps"]) for r in ev["rows"]] == [("ddim", 2)]
    assert read_video(tmp_path / "s2/samples/final/clip_0000.mp4", None, 1).shape == (1, 4, 16, 16)


def test_prediction_recipe_trains_its_plain_model_first_and_compares_methods(video_run, tmp_path):
    # the plain model comes from its recipe file (here: the tiny version written out), trained by this recipe
    plain = tmp_path / "plain.toml"
    _, sections = load_recipe(ROOT / "recipes/video_moving_digits", tiny(video_run), schemas())
    plain.write_text(to_toml(sections))
    run, plain_run = tmp_path / "pred", tmp_path / "plain_run"
    over = tiny(video_run) + [f"predict.unconditional_run={plain_run}", f"predict.unconditional_recipe={plain}",
                              'predict.unconditional_overrides=["video.known_patterns=[]", "model.extra_in_channels=0"]',
                              "eval.classifier_epochs=30", "predict.eval_n=10", "predict.batch=10",
                              "predict.replace_steps=2",
                              "predict.repaint_steps=2", "predict.conditioned_steps=2", "predict.jump_length=1",
                              "predict.reconstruction_steps=2",
                              "predict.jump_n_sample=2", 'predict.tasks=["prefix:2", "ends", "0,2"]']
    cli("train", ROOT / "recipes/video_prediction_moving_digits", "--out", run, *over)
    assert (plain_run / "stages/train.json").is_file() and not (plain_run / "stages/evaluate.json").exists()
    ev = json.loads((run / "eval.json").read_text())
    assert [(r["task"], r["method"]) for r in ev["rows"]] == [
        (t, m) for t in ("prefix:2", "ends", "0,2") for m in ("conditioned", "replace", "repaint", "reconstruction")]
    # the reference rows: the classifier reads the real unknown frames (measured 0.50-0.55, one clip per class);
    # completions by 2-step models of a 3-step training are not read as their clips' digits (0.05-0.10)
    real = {r["task"]: r["label_accuracy"] for r in ev["real_rows"]}
    assert sorted(real) == ["0,2", "ends", "prefix:2"] and min(real.values()) > 0.3
    assert all(r["label_accuracy"] < real[r["task"]] and r["psnr"] > 0 for r in ev["rows"])
    assert (run / "samples/prediction.png").is_file() and (run / "samples/prediction.gif").is_file()
    # the CLI finds the plain model of a prediction run for replacement sampling
    src = sorted((video_run / "clips/test").rglob("*.mp4"))[0]
    cli("inpaint", run, "--input", src, "--known-frames", "0,3", "--method", "replace", "--steps", 2,
        "--out", tmp_path / "interp.mp4")
    cli("inpaint", run, "--input", src, "--known-frames", "0:2", "--steps", 2, "--out", tmp_path / "pred.png")


@pytest.mark.parametrize("args, message", [
    (["inpaint", "{run}", "--input", "{clip}", "--known-frames", "0,9", "--out", "{tmp}/x.mp4"], "outside the clip"),
    (["inpaint", "{run}", "--input", "{clip}", "--known-frames", "0:4", "--out", "{tmp}/x.mp4"], "nothing is left"),
    (["sample", "{run}", "--frames", "12", "--context", "4", "--out", "{tmp}/x.mp4"], "--context 4"),
    (["inpaint", "{run}", "--input", "{tmp}/missing.mp4", "--known-frames", "0", "--out", "{tmp}/x.mp4"],
     "not found"),
    (["inpaint", "{run}", "--known-frames", "0", "--out", "{tmp}/x.mp4"], "--input"),
    (["sample", "{run}", "--class", "12", "--out", "{tmp}/x.mp4"], "--class"),
])
def test_cli_errors_are_one_clear_line(video_run, tmp_path, capsys, args, message):
    clip = sorted((video_run / "clips/test").rglob("*.mp4"))[0]
    fill = {"run": video_run / "run", "clip": clip, "tmp": tmp_path}
    assert main([a.format(**fill) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("overrides, message", [
    (["model.extra_in_channels=0"], "set it to 2"),
    (['video.known_patterns=[]'], "set it to 0"),
    (['video.known_patterns=["sideways"]'], "sideways"),
    (["model.image_size=32"], "model.image_size"),
    (["prep.build=", "data.root={tmp}/nothing"], "does not exist"),
])
def test_recipe_config_errors(tmp_path, capsys, overrides, message):
    over = tiny(tmp_path) + [o.format(tmp=tmp_path) for o in overrides]
    assert main(["train", str(ROOT / "recipes/video_moving_digits"), "--out", str(tmp_path / "run"), *over]) == 2
    assert message in capsys.readouterr().err


def test_prediction_recipe_needs_a_frame_conditioned_model(tmp_path, capsys):
    over = tiny(tmp_path) + ["video.known_patterns=[]", "model.extra_in_channels=0"]
    assert main(["train", str(ROOT / "recipes/video_prediction_moving_digits"), "--out", str(tmp_path / "r"),
                 *over]) == 2
    assert "frame-conditioned" in capsys.readouterr().err


def test_joint_image_video_training_appends_independent_frames(tmp_path):
    from multidiff.modalities.video import VIDEO, VideoTask
    from multidiff.engine.trainer import BatchRandom

    _, sections = load_recipe(ROOT / "recipes/video_moving_digits", tiny(tmp_path) + ["video.image_frames=3"],
                              schemas())
    task = VideoTask(sections, torch.device("cpu"), bf16=False)
    x0 = torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 1, 4, 16, 16) / 4    # clip b is constant b / 4
    x, mask = task._append_images(x0, BatchRandom(0, 0, 4, slice(0, 4), "cpu"), 3)
    assert x.shape == (4, 1, 7, 16, 16) and mask.tolist() == [[False] * 4 + [True] * 3] * 4
    # class-conditional: a clip's extra frames are its own (its label describes them)
    assert torch.equal(x[:, :, 4:], x0[:, :, :3])
    net = VIDEO.build_model(sections)
    loss = task.loss(net, (torch.rand(4, 1, 4, 16, 16) * 2 - 1, torch.arange(4)),
                     BatchRandom(0, 0, 4, slice(0, 4), "cpu"))
    loss.backward()
    assert torch.isfinite(loss) and net.out_conv.weight.grad.abs().sum() > 0  # (zero-initialised output)


def test_ucf101_recipe_smoke_on_the_real_layout(tmp_path):
    """The paper-sized config, shrunk by overrides, on UCF-101's real folder and list layout in miniature:
    prepare validates it and writes the split lists, then a class-conditional model with joint
    image-video frames trains and is evaluated (motion metrics; no digit classifier for real video)."""
    from helpers.fake_data import UCF_CLASSES, make_fake_ucf101

    make_fake_ucf101(tmp_path / "ucf")
    run = tmp_path / "run"
    cli("train", ROOT / "recipes/ucf101", "--out", run, f"data.root={tmp_path / 'ucf'}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.frames=4", "data.size=16", "model.image_size=16",
        "model.frames=4", "model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]",
        "model.attention_resolutions=[8]", "model.num_heads=4", f"model.num_classes={len(UCF_CLASSES)}",
        "video.image_frames=2", "train.steps=2", "train.batch_size=4", "train.checkpoint_every=2",
        "train.num_workers=0", "train.sample_every=0", "sample.n=2", "sample.steps=2", "eval.n=3", "eval.batch=3",
        'eval.table=["ddim:2"]', 'predict.tasks=["prefix:2", "ends"]', "predict.eval_n=3", "predict.batch=3",
        "predict.conditioned_steps=2")
    assert (tmp_path / "ucf/splits/train1.txt").is_file()
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["rows"][0]) >= {"speed", "jerk", "seconds_per_clip"} and "fd" not in ev["rows"][0]
    assert read_video(run / "samples/final/clip_0001.mp4", None, 3).shape == (3, 4, 16, 16)
    # the default trains the way the digits recipe does: one frame-conditioned model (with the joint image frames,
    # never known) that also predicts and interpolates
    pred = json.loads((run / "predict.json").read_text())
    assert [r["method"] for r in pred["rows"]] == ["conditioned"] * 2 and all(r["psnr"] > 0 for r in pred["rows"])


def test_latent_video_recipe_runs_frame_by_frame_in_an_autoencoders_latents(video_run, tmp_path, capsys):
    """[latent] autoencoder switches the video recipe to latent clips (16 px frames -> 4x4x4 latents):
    training, sampling and frame completion decode back to pixels, and a changed autoencoder is refused."""
    from multidiff.utils import read_json, write_json

    ae, run = tmp_path / "ae", tmp_path / "run"
    cli("train", ROOT / "recipes/autoencoder_digits", "--out", ae, "data.size=16", "model.base_channels=8",
        "model.norm_groups=4", "loss.disc_start=2", "loss.disc_channels=8", "eval.n=20", "train.steps=2",
        "train.batch_size=16", "train.checkpoint_every=2", "train.warmup_steps=1", "data.max_items=40")
    over = tiny(video_run) + [f"latent.autoencoder={ae}", "model.in_channels=4", "model.extra_in_channels=5",
                              "model.image_size=4",
                              "model.attention_resolutions=[2]", "eval.n=4", "eval.batch=4", 'eval.table=["ddim:2"]']
    cli("train", ROOT / "recipes/video_moving_digits", "--out", run, *over)
    assert read_video(run / "samples/final/clip_0000.mp4", None, 1).shape == (1, 4, 16, 16)
    src = sorted((video_run / "clips/test").rglob("*.mp4"))[0]
    cli("inpaint", run, "--input", src, "--known-frames", "0:2", "--steps", 2, "--out", tmp_path / "pred.gif")
    assert read_video(tmp_path / "pred.gif", None, 1).shape == (1, 4, 16, 16)
    # longer clips window by window in latents, and a still kept exactly as frame 0 (pasted back in pixels)
    cli("sample", run, "--n", 1, "--frames", 7, "--steps", 2, "--out", f"{tmp_path / 'long'}/")
    assert read_video(tmp_path / "long/clip_0000.gif", None, 1).shape == (1, 7, 16, 16)
    still = read_video(src, 16, 1, max_frames=1)[:, 0]
    save_image_grid(still[None], tmp_path / "still.png", padding=0)
    cli("animate", run, "--image", tmp_path / "still.png", "--frames", 6, "--steps", 2, "--out", tmp_path / "a.gif")
    got = read_video(tmp_path / "a.gif", None, 1)
    assert got.shape == (1, 6, 16, 16) and torch.allclose(got[:, 0], still, atol=1.01 / 127.5)
    # the U-Net must fit the latents, not the pixels
    assert main(["train", str(ROOT / "recipes/video_moving_digits"), "--out", str(tmp_path / "bad"), *over,
                 "model.in_channels=1"]) == 2
    assert "latent_channels" in capsys.readouterr().err
    # another latent scale = other latents: sampling the old model with it is refused
    info = read_json(ae / "autoencoder.json")
    write_json(ae / "autoencoder.json", {**info, "scale": info["scale"] * 2})
    assert main(["sample", str(run), "--n", "1", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "not trained on the latents" in capsys.readouterr().err
