"""One frame-conditioned video model for every job (MCVD-style known-frame patterns none / prefix / ends),
clips longer than the trained ones window by window (autoregressive with the last K frames kept
exactly, or overlapping windows fused at every step), `multidiff animate` (a still kept exactly as
frame 0), the long-video drift stage, and data_prep.videos on a folder of the user's own clips."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multidiff.cli import main
from multidiff.data.frame_masks import pattern_mask, random_frame_masks
from multidiff.data.still import load_still
from multidiff.data.video import VideoData, build_video_dataset, read_video, write_video
from multidiff.engine.runs import load_recipe
from multidiff.engine.trainer import BatchRandom
from multidiff.kinds import kind_of, schemas
from multidiff.modalities.base import Trained
from multidiff.modalities.image import IMAGE
from multidiff.modalities.video import VIDEO, VideoTask
from multidiff.pipelines.extend import Extension, WindowFusion, extend, plan, rescheduled_noise

ROOT = Path(__file__).parent.parent
RECIPE = ROOT / "recipes/video_moving_digits"


def tiny(tmp: Path) -> list[str]:
    """16 px clips of 4 frames, a 2-level 16-channel U-Net, 3 training steps."""
    return [f"data.root={tmp / 'clips'}", f"data.cache_dir={tmp / 'cache'}", "prep.n=20", "prep.n_test=10",
            "prep.frames=6", "prep.digit_size=8", "data.frames=4", "data.size=16", "model.image_size=16",
            "model.frames=4", "model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]",
            "model.attention_resolutions=[8]", "train.steps=3", "train.batch_size=4", "train.checkpoint_every=3",
            "train.warmup_steps=1", "train.log_every=1", "train.sample_every=0", "sample.n=4", "sample.steps=2",
            "eval.classifier_epochs=1", "eval.n=10", "eval.batch=10", 'eval.table=["dpmpp_2m:2"]',
            'predict.tasks=["prefix:2", "ends"]', "predict.eval_n=10", "predict.conditioned_steps=2"]


def sections_of(tmp: Path, *more: str) -> dict:
    return load_recipe(RECIPE, tiny(tmp) + list(more), schemas())[1]


def cli(*args):
    assert main([str(a) for a in args]) == 0


def one_line_error(capsys, *args) -> str:
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


class Spy(torch.nn.Module):
    """UNet3D's call signature; a fixed smooth map of its input, recording every call's concat input."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.calls = []

    def forward(self, x, t, y=None, concat=None, frame_mask=None):
        self.calls.append(None if concat is None else concat.detach().float().cpu().clone())
        return self.w * x


# ---- training: the known-frame patterns -------------------------------------------------------------

def test_known_frame_patterns_none_prefix_ends_are_drawn_alike():
    T, n = 8, 3000
    draws = torch.rand(n, 2, generator=torch.Generator().manual_seed(0))
    m = random_frame_masks(n, T, ["none", "prefix", "ends"], draws)
    known = m[:, 0, :, 0, 0]
    none = (known.sum(1) == 0)
    ends = (known == pattern_mask("ends", T)[0, 0, :, 0, 0]).all(1)
    k = known.sum(1).long()
    prefix = ~none & ~ends
    assert torch.equal(known[prefix], (torch.arange(T) < k[prefix, None]).float())  # a prefix, nothing else
    assert sorted(k[prefix].unique().tolist()) == [1, 2, 3, 4]                       # of 1..T//2 frames
    for share in (none, prefix, ends):
        assert abs(float(share.double().mean()) - 1 / 3) < 0.03
    assert abs(float(ends.double().mean()) - float(none.double().mean())) < 0.05


def test_training_feeds_the_mask_and_known_frames_with_joint_image_frames_never_known(tmp_path):
    s = sections_of(tmp_path, "video.image_frames=2")
    VIDEO.check(s)  # frame conditioning and joint image-video training combine (the ucf101 default)
    net, task = Spy(), VideoTask(s, torch.device("cpu"), bf16=False)
    x0 = torch.rand(6, 1, 4, 16, 16) * 2 - 1
    loss = task.loss(net, (x0, torch.arange(6)), BatchRandom(0, 0, 6, slice(0, 6), "cpu"))
    assert torch.isfinite(loss)
    concat = net.calls[0]
    assert concat.shape == (6, 2, 6, 16, 16)
    mask = concat[:, 0, :, 0, 0]
    assert mask[:, 4:].abs().sum() == 0 and concat[:, 1, 4:].abs().sum() == 0      # appended images: unknown
    assert torch.equal(concat[:, 1:, :4], x0 * concat[:, :1, :4])                    # known frames, as they are


def test_one_model_has_both_roles_and_a_completion_only_model_refuses_generation(tmp_path):
    mcvd = sections_of(tmp_path)
    assert VIDEO.conditioned(mcvd) and VIDEO.generates(mcvd) and VIDEO.continues(mcvd)
    assert kind_of(mcvd).roles(mcvd) == ("conditioned", "plain") and kind_of(mcvd).default_method(mcvd) == "conditioned"
    assert VIDEO.generation_cond(mcvd, (3, 1, 4, 16, 16))["concat"].shape == (3, 2, 4, 16, 16)
    only = sections_of(tmp_path, 'video.known_patterns=["prefix", "ends"]')
    assert not VIDEO.generates(only) and kind_of(only).roles(only) == ("conditioned",)
    assert '"none"' in VIDEO.generation_refusal(only, "runs/x")
    plain = sections_of(tmp_path, "video.known_patterns=[]", "model.extra_in_channels=0")
    assert kind_of(plain).roles(plain) == ("plain",) and VIDEO.generation_cond(plain, (1, 1, 4, 16, 16)) == {}


# ---- window by window ---------------------------------------------------------------------------------

def test_plan_picks_windows_only_where_they_apply(tmp_path):
    mcvd = sections_of(tmp_path)
    plain = sections_of(tmp_path, "video.known_patterns=[]", "model.extra_in_channels=0")
    assert plan(VIDEO, mcvd, 4) is None and plan(VIDEO, mcvd, None) is None         # fits one window
    assert plan(VIDEO, mcvd, 64) == Extension(4, 2)                                 # autoregressive, K = half
    assert plan(VIDEO, mcvd, 64, context=3) == Extension(4, 3)
    assert plan(VIDEO, mcvd, 64, fusion=True) == Extension(4, 2, fusion=True)
    assert plan(VIDEO, plain, 64) is None                                           # a plain model: one pass, as before
    assert plan(VIDEO, plain, 64, fusion=True) == Extension(4, 2, fusion=True)
    for kw, message in ((dict(context=2), "frame-conditioned"), (dict(still=True), "cannot animate")):
        with pytest.raises(ValueError, match=message):
            plan(VIDEO, plain, 64, **kw)
    with pytest.raises(ValueError, match="share 1 to 3"):
        plan(VIDEO, mcvd, 64, context=4)
    with pytest.raises(ValueError, match="needs a video run"):
        plan(IMAGE, {}, None, still=True)
    assert Extension(4, 2).starts(10) == [0, 2, 4, 6] and Extension(4, 1).starts(4) == [0]
    assert Extension(4, 3).starts(9) == [0, 1, 2, 3, 4, 5]


def test_autoregressive_windows_continue_from_the_last_k_frames_kept_exactly(tmp_path):
    s = sections_of(tmp_path, "sample.guidance_scale=1.0")
    spy = Spy()
    trained = Trained(VIDEO, s, spy, None)
    still = torch.rand(1, 1, 10, 16, 16) * 2 - 1
    mask = torch.zeros(1, 1, 10, 1, 1)
    mask[:, :, 0] = 1
    x = extend(trained, 2, 10, Extension(4, 2), s["sample"], torch.device("cpu"), False, known=still, mask=mask,
               seed=0, progress=False)
    assert x.shape == (2, 1, 10, 16, 16)
    assert torch.equal(x[:, :, 0], still[:, :, 0].expand(2, 1, 16, 16))             # the known frame, exactly
    steps = len(spy.calls) // 4
    assert len(spy.calls) == 4 * steps and steps >= 2                               # 4 windows of 4 frames
    for i, s0 in enumerate((0, 2, 4, 6)):
        for c in spy.calls[i * steps:(i + 1) * steps]:
            assert c.shape == (2, 2, 4, 16, 16)
            want = torch.zeros(4)
            want[:1 if i == 0 else 2] = 1                                               # frame 0, then the context
            assert torch.equal(c[0, 0, :, 0, 0], want)
            k = int(want.sum())
            assert torch.equal(c[:, 1, :k], x[:, 0, s0:s0 + k])                       # what is there, kept as it is
            assert c[:, 1, k:].abs().sum() == 0


def test_overlap_fusion_averages_the_windows_outputs():
    def first_frame(x, t, **cond):  # each window answers with its own first frame everywhere
        return x[:, :, :1].expand_as(x)
    fused = WindowFusion(first_frame, Extension(4, 2).starts(10), 4)
    x = torch.arange(10.0).view(1, 1, 10, 1, 1).expand(2, 1, 10, 3, 3)
    out = fused(x, torch.zeros(2))[0, 0, :, 0, 0]
    # frame f is covered by the windows starting at 0, 2, 4, 6 that contain it; their answers are averaged
    assert out.tolist() == [0, 0, 1, 1, 3, 3, 5, 5, 6, 6]


def test_overlap_fusion_samples_one_long_clip_with_known_frames_kept(tmp_path):
    s = sections_of(tmp_path, "sample.guidance_scale=1.0")
    spy = Spy()
    known = torch.rand(1, 1, 9, 16, 16) * 2 - 1
    mask = torch.zeros(1, 1, 9, 1, 1)
    mask[:, :, 0] = 1
    x = extend(Trained(VIDEO, s, spy, None), 1, 9, Extension(4, 2, fusion=True), s["sample"], torch.device("cpu"),
               False, known=known, mask=mask, seed=0, progress=False)
    assert x.shape == (1, 1, 9, 16, 16) and torch.equal(x[:, :, 0], known[:, :, 0])
    # windows start at 0, 2, 4 (the last runs past the clip: 10 frames sampled, 9 kept); every model call
    # sees one window's slice of the mask, with the known frame in the first window only
    assert len(spy.calls) % 4 == 0 and all(c.shape == (1, 2, 4, 16, 16) for c in spy.calls)
    masks = [c[0, 0, :, 0, 0].tolist() for c in spy.calls[:4]]
    assert masks == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_rescheduled_noise_reuses_the_first_windows_noise_frames():
    z = rescheduled_noise(2, 1, 11, (3, 3), 4, torch.Generator().manual_seed(0))
    assert z.shape == (2, 1, 11, 3, 3)
    first = z[:, :, :4]
    for f in range(4, 11):
        assert any(torch.equal(z[:, :, f], first[:, :, j]) for j in range(4))
    assert len({tuple(z[0, 0, f].flatten().tolist()) for f in range(4, 8)}) == 4   # a permutation, not a repeat


# ---- through the command line -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny one-model run (the default recipe) through every stage, and a tiny plain run."""
    tmp = tmp_path_factory.mktemp("long")
    cli("train", RECIPE, "--out", tmp / "run", *tiny(tmp))
    cli("train", RECIPE, "--out", tmp / "plain", *tiny(tmp), "video.known_patterns=[]", "model.extra_in_channels=0",
        "--stage", "prepare", "--stage", "train")
    return tmp


def test_sample_makes_clips_longer_than_trained_window_by_window(runs, tmp_path):
    cli("sample", runs / "run", "--n", 2, "--frames", 10, "--steps", 2, "--class", 3, "--out", tmp_path / "a.gif")
    cli("sample", runs / "run", "--n", 1, "--frames", 9, "--steps", 2, "--overlap-fusion", "--context", 1,
        "--out", tmp_path / "f/")
    cli("sample", runs / "plain", "--n", 1, "--frames", 9, "--steps", 2, "--overlap-fusion",
        "--out", tmp_path / "p.gif")
    assert read_video(tmp_path / "f/clip_0000.gif", None, 1).shape == (1, 9, 16, 16)
    assert read_video(tmp_path / "p.gif", None, 1).shape[1] == 9


def test_the_one_model_also_completes_as_a_plain_model(runs, tmp_path):
    """--method replace / reconstruction use the same weights with nothing known as model input."""
    src = sorted((runs / "clips/test").rglob("*.mp4"))[0]
    for method in ("replace", "reconstruction"):
        cli("inpaint", runs / "run", "--input", src, "--known-frames", "0:2", "--method", method, "--steps", 2,
            "--out", tmp_path / f"{method}.gif")
        got, inp = read_video(tmp_path / f"{method}.gif", 16, 1), read_video(src, 16, 1, max_frames=4)
        assert got.shape == (1, 4, 16, 16) and (got[:, :2] - inp[:, :2]).abs().max() <= 1.01 / 127.5


def still_png(path: Path, size=(30, 20), rgb=True) -> Path:
    a = (np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(a if rgb else a[..., 0]).save(path)
    return path


def test_animate_keeps_the_still_exactly_as_frame_0(runs, tmp_path, capsys):
    still = still_png(tmp_path / "still.png")  # RGB, 30x20: resized and made grayscale, with notes
    cli("animate", runs / "run", "--image", still, "--frames", 9, "--steps", 2, "--class", 2, "--guidance", 2,
        "--out", tmp_path / "clip.gif")
    out = capsys.readouterr().out
    assert "30x20 px resized to the model's 16x16" in out and "grayscale" in out
    got = read_video(tmp_path / "clip.gif", None, 1)
    want, _ = load_still(still, 16, 1)
    assert got.shape == (1, 9, 16, 16)
    assert (got[:, 0] - want).abs().max() <= 1.01 / 127.5                            # GIF: lossless gray levels
    cli("animate", runs / "run", "--image", still, "--n", 2, "--steps", 2, "--out", tmp_path / "many/")
    assert (tmp_path / "many/clip_0001.gif").is_file() and (tmp_path / "many/frames.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--image", "{tmp}/missing.png"], "not found"),
    (["--image", "{tmp}/broken.png"], "cannot read image"),
    (["--image", "{tmp}/moving.png"], "is an animation of 2 frames"),
    (["--image", "{tmp}"], "is a folder"),
    (["--image", "{tmp}/s.png", "--context", "4"], "share 1 to 3"),
    (["--image", "{tmp}/s.png", "--guidance", "2"], "--guidance needs --class"),
    (["--image", "{tmp}/s.png", "--class", "12"], "--class 12"),
    (["--image", "{tmp}/s.png", "--frames", "0"], "--frames"),
])
def test_animate_errors_are_one_line(runs, tmp_path, capsys, args, message):
    still_png(tmp_path / "s.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    frames = [Image.new("L", (8, 8), v) for v in (0, 255)]
    frames[0].save(tmp_path / "moving.png", save_all=True, append_images=frames[1:])  # an animated PNG
    err = one_line_error(capsys, "animate", runs / "run", *[a.format(tmp=tmp_path) for a in args],
                         "--out", tmp_path / "x.gif")
    assert message in err and not (tmp_path / "x.gif").exists()


def test_animate_and_extension_refusals_name_the_fix(runs, tmp_path, capsys):
    still = still_png(tmp_path / "s.png")
    err = one_line_error(capsys, "animate", runs / "plain", "--image", still, "--out", tmp_path / "x.gif")
    assert "cannot animate a still" in err and "prefix" in err and "--overlap-fusion" in err
    err = one_line_error(capsys, "sample", runs / "plain", "--frames", 9, "--context", 2, "--out", tmp_path / "x.gif")
    assert "frame-conditioned" in err
    err = one_line_error(capsys, "animate", runs / "run", "--image", still, "--out", still, "--overwrite")
    assert "is an input" in err
    # the plain run still animates with overlapping windows (the still kept by replacement)
    cli("animate", runs / "plain", "--image", still, "--frames", 6, "--steps", 2, "--overlap-fusion",
        "--out", tmp_path / "fused.gif")
    assert read_video(tmp_path / "fused.gif", None, 1).shape == (1, 6, 16, 16)


def test_long_video_stage_draws_the_drift_curves(runs, capsys):
    run = runs / "run"
    cli("train", RECIPE, "--out", run, *tiny(runs), "--stage", "long_video", "long_video.frames=10", "long_video.n=10",
        "long_video.batch=10", 'long_video.modes=["autoregressive", "fusion", "fusion_rescheduled"]')
    res = json.loads((run / "long_video.json").read_text())
    assert set(res["modes"]) == {"autoregressive", "fusion", "fusion_rescheduled"} and res["real_clips"] == 10
    for curves in [*res["modes"].values(), res["real"]]:
        for key in ("fd", "label_accuracy", "identity", "speed", "jerk"):
            assert len(curves[key]) == 10, key
        assert curves["identity"][0] > 0
    # real clips glide; a 3-step model's frames barely move (the curves tell them apart)
    assert np.nanmean(res["real"]["speed"]) > 2 * np.nanmean(res["modes"]["autoregressive"]["speed"])
    for f in ("long_video.png", "long_video.md", "samples/long_fusion.gif", "samples/long_autoregressive.png"):
        assert (run / f).is_file(), f
    assert len(read_video(sorted((runs / "clips_long10/test").rglob("*.mp4"))[0], None, 1)[0]) == 10
    capsys.readouterr()
    cli("train", RECIPE, "--out", run, *tiny(runs), "--stage", "long_video", "long_video.frames=10", "long_video.n=10",
        "long_video.batch=10", 'long_video.modes=["autoregressive", "fusion", "fusion_rescheduled"]')
    assert "done already" in capsys.readouterr().out


# ---- your own clips ---------------------------------------------------------------------------------

def my_clips(src: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    for rel, frames in (("cats/a.mp4", 12), ("cats/b.mp4", 9), ("dogs/c.mp4", 20), ("dogs/d.mp4", 10),
                        ("dogs/e.mp4", 8), ("dogs/short.mp4", 3)):
        write_video(torch.rand(3, frames, 20, 30, generator=g) * 2 - 1, src / rel, fps=10)
    (src / "dogs/broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    return src


def test_data_prep_videos_makes_the_folder_layout_from_your_clips(tmp_path, capsys):
    from data_prep import videos

    src, out = my_clips(tmp_path / "src"), tmp_path / "out"
    assert videos.main(["--src", str(src), "--out", str(out), "--size", "16", "--frames", "4", "--channels", "1",
                        "--test-share", "0.3"]) == 0
    assert "left out: dogs/broken.mp4" in capsys.readouterr().out
    man = json.loads((out / "manifest.json").read_text())
    assert man["classes"] == ["cats", "dogs"] and man["complete"]
    assert "fewer than --frames 4" in man["videos"]["dogs/short.mp4"]["left_out"]
    assert "not a readable video" in man["videos"]["dogs/broken.mp4"]["left_out"]
    assert len(man["videos"]["dogs/c.mp4"]["clips"]) == 5                          # 20 frames -> 5 clips of 4
    for rel, v in man["videos"].items():  # a source video's clips are all in its split
        assert all(c.startswith(v["split"] + "/") for c in v["clips"]), rel
    assert {v["split"] for v in man["videos"].values() if v["clips"]} == {"train", "test"}
    for split in ("train", "test"):
        ds = build_video_dataset(VideoData(layout="folder", root=str(out), frames=4, size=16, channels=1,
                                           cache=False), split)
        assert ds.class_names == ["cats", "dogs"] and len(ds) == man["counts"][split]
        clip, y = ds[0]
        assert clip.shape == (1, 4, 16, 16) and y in (0, 1)
    # idempotent; other options into the same folder are refused
    assert videos.main(["--src", str(src), "--out", str(out), "--size", "16", "--frames", "4", "--channels", "1",
                        "--test-share", "0.3"]) == 0
    assert "0 written" in capsys.readouterr().out
    assert videos.main(["--src", str(src), "--out", str(out), "--size", "24", "--frames", "4"]) == 1
    assert "other options" in capsys.readouterr().err
    assert videos.main(["--src", str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")]) == 1


def test_a_video_recipe_prepares_your_clips_itself(tmp_path):
    src = my_clips(tmp_path / "src")
    cli("train", RECIPE, "--out", tmp_path / "run", *tiny(tmp_path), "prep.build=videos", f"prep.source={src}",
        "prep.frames=4", "data.channels=3", "model.in_channels=3", "model.extra_in_channels=4", "model.num_classes=2",
        "--stage", "prepare")
    assert sorted(p.name for p in (tmp_path / "clips/train").iterdir()) == ["cats", "dogs"]
    summary = json.loads((tmp_path / "run/stages/prepare.json").read_text())["summary"]
    assert summary["classes"] == 2 and summary["train_clips"] > 0 and summary["test_clips"] > 0
