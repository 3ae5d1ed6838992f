"""Latent diffusion end to end through the CLI on tiny configs: autoencoder -> latent recipe, sampling
and inpainting of a latent run, the latent cache's validation, and the mismatch errors."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from multidiff.cli import main
from multidiff.data.latents import build_latent_cache
from multidiff.utils import read_json, write_json

ROOT = Path(__file__).parent.parent
TRAIN = ["train.steps=4", "train.batch_size=16", "train.checkpoint_every=2", "train.warmup_steps=1",
         "train.log_every=1", "data.max_items=40"]
AE = ["model.base_channels=8", "model.norm_groups=4", "loss.disc_start=2", "loss.disc_channels=8", "eval.n=20",
      *TRAIN]
LATENT = ["latent.shard_size=16", "model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]",
          "model.num_res_blocks=1", "model.attention_resolutions=[4]", "sample.n=8", "sample.steps=3", "eval.n=20",
          "eval.batch=10", 'eval.table=["ddim:3"]', "eval.classifier_epochs=1", *TRAIN]


def cli(*args):
    assert main([str(a) for a in args]) == 0


def fails(capsys, *args) -> str:
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("latent")
    cli("train", ROOT / "recipes/autoencoder_digits", "--out", base / "ae", *AE)
    cli("train", ROOT / "recipes/latent_digits", "--out", base / "lat", f"latent.autoencoder={base / 'ae'}", *LATENT)
    return base / "ae", base / "lat"


def test_autoencoder_run_records_scale_hash_and_held_out_quality(runs):
    ae, _ = runs
    info = read_json(ae / "autoencoder.json")
    assert info["factor"] == 4 and info["latent_channels"] == 4 and info["scale"] > 0
    assert len(info["weights_sha256"]) == 16 and (ae / info["checkpoint"] / "ema.safetensors").exists()
    ev = read_json(ae / "eval.json")
    assert ev["n"] == 20 and np.isfinite(ev["psnr"]) and -1 <= ev["ssim"] <= 1 and ev["latent_shape"] == [4, 8, 8]
    assert (ae / "samples/reconstructions.png").exists()


def test_latent_recipe_trains_on_cached_latents_and_scores_decoded_images(runs, capsys):
    ae, lat = runs
    man = read_json(lat / "latents/train/manifest.json")
    assert man["complete"] and man["count"] == 40 and man["shape"] == [8, 8, 8] and len(list(
        (lat / "latents/train").glob("shard_*.safetensors"))) == 3
    assert read_json(lat / "latent.json")["identity"]["weights_sha256"] == read_json(ae / "autoencoder.json")[
        "weights_sha256"]
    ev = read_json(lat / "eval.json")
    assert ev["rows"][0]["sampler"] == "ddim" and np.isfinite(ev["rows"][0]["fd"])
    assert ev["autoencoder"]["held_out"]["n"] == 20
    assert Image.open(lat / "samples/final.png").size == (3 * 34 + 2, 3 * 34 + 2)  # 32 px images, not 8 px latents
    capsys.readouterr()
    cli("train", ROOT / "recipes/latent_digits", "--out", lat, f"latent.autoencoder={ae}", *LATENT)
    assert capsys.readouterr().out.count("done already") == 4


def test_sample_command_decodes_a_latent_run(runs, tmp_path):
    _, lat = runs
    cli("sample", lat, "--n", 10, "--steps", 3, "--out", tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").size == (10 * 34 + 2, 34 + 2)
    for sampler in ("ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m"):
        cli("sample", lat, "--n", 2, "--class", 3, "--guidance", 2.0, "--sampler", sampler, "--steps", 3,
            "--out", f"{tmp_path}/{sampler}/")
        assert Image.open(tmp_path / sampler / "sample_0001.png").size == (32, 32)


def _inpaint_keeps_known_pixels(run, method, tmp_path):
    src = np.zeros((32, 32), np.uint8)
    src[6:26, 12:20] = 255
    Image.fromarray(src).save(tmp_path / "digit.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[10:21, 9:22] = 255  # white = fill; not aligned to the 4x4 latent cells
    Image.fromarray(mask).save(tmp_path / "mask.png")
    cli("inpaint", run, "--image", tmp_path / "digit.png", "--mask", tmp_path / "mask.png", "--method", method,
        "--steps", 3, "--out", tmp_path / "out.png")
    out = np.asarray(Image.open(tmp_path / "out.png").convert("L")).astype(int)
    keep = mask == 0
    assert np.abs(out[keep] - src[keep]).max() <= 1


@pytest.mark.parametrize("method", ["repaint", "replace", "reconstruction"])
def test_inpaint_command_in_latent_space(runs, tmp_path, method):
    _inpaint_keeps_known_pixels(runs[1], method, tmp_path)


def test_mask_conditioned_latent_model_with_its_autoencoder_trained_first(runs, tmp_path, capsys):
    ae, _ = runs
    new_ae = tmp_path / "ae_auto"
    cli("train", ROOT / "recipes/latent_digits", "--out", tmp_path / "cond", f"latent.autoencoder={new_ae}",
        f"latent.autoencoder_recipe={ae / 'config.toml'}", 'latent.train_masks=["mixture"]',
        "model.extra_in_channels=5", *LATENT)
    assert (new_ae / "autoencoder.json").exists()   # the missing autoencoder was trained by its recipe
    _inpaint_keeps_known_pixels(tmp_path / "cond", "conditioned", tmp_path)
    err = fails(capsys, "inpaint", tmp_path / "cond", "--image", tmp_path / "digit.png", "--mask-kind", "center",
                "--method", "repaint", "--out", tmp_path / "x.png")
    assert "needs an unconditional model" in err


# ---- mismatches ----------------------------------------------------------------------------
def test_missing_autoencoder_says_the_command(tmp_path, capsys):
    err = fails(capsys, "train", ROOT / "recipes/latent_digits", "--out", tmp_path / "lat",
                f"latent.autoencoder={tmp_path / 'nothing'}", "latent.autoencoder_recipe=", *LATENT)
    assert f"missing '{tmp_path / 'nothing' / 'autoencoder.json'}'" in err
    assert f"multidiff train recipes/autoencoder_digits --out {tmp_path / 'nothing'}" in err


def test_autoencoder_run_is_not_a_sampler(runs, tmp_path, capsys):
    ae, _ = runs
    assert "is an autoencoder run" in fails(capsys, "sample", ae, "--out", tmp_path / "x.png")
    assert "is an autoencoder run" in fails(capsys, "inpaint", ae, "--image", ae / "samples/reconstructions.png",
                                            "--mask-kind", "center", "--out", tmp_path / "x.png")


def test_model_that_does_not_fit_the_latents(runs, tmp_path, capsys):
    ae, _ = runs
    err = fails(capsys, "train", ROOT / "recipes/latent_digits", "--out", tmp_path / "lat", f"latent.autoencoder={ae}",
                *LATENT, "model.in_channels=3", "model.image_size=16", "sample.clip_x0=1.0")
    assert "set model.in_channels = 4" in err and "set model.image_size = 8" in err and "sample.clip_x0 = 0" in err


def _copies(runs, tmp_path):
    ae, lat = tmp_path / "ae", tmp_path / "lat"
    shutil.copytree(runs[0], ae)
    shutil.copytree(runs[1], lat)
    cfg = (lat / "config.toml").read_text().replace(str(runs[0]), str(ae))
    (lat / "config.toml").write_text(cfg)
    return ae, lat


def test_changed_scale_or_channels_is_refused_naming_the_file(runs, tmp_path, capsys):
    ae, lat = _copies(runs, tmp_path)
    cli("sample", lat, "--n", 2, "--steps", 2, "--out", tmp_path / "ok.png")
    info = read_json(ae / "autoencoder.json")
    write_json(ae / "autoencoder.json", {**info, "scale": info["scale"] * 2})
    err = fails(capsys, "sample", lat, "--n", 2, "--out", tmp_path / "x.png")
    assert f"'{lat / 'latent.json'}'" in err and "scale" in err and "new --out directory" in err
    err = fails(capsys, "inpaint", lat, "--image", tmp_path / "ok.png", "--mask-kind", "center", "--out",
                tmp_path / "x.png")
    assert "scale" in err
    # the training re-run refuses too (it would mix latents of two autoencoders)
    err = fails(capsys, "train", ROOT / "recipes/latent_digits", "--out", lat, f"latent.autoencoder={ae}", *LATENT)
    assert "latent.json" in err


def test_changed_weights_or_missing_autoencoder_is_refused(runs, tmp_path, capsys):
    ae, lat = _copies(runs, tmp_path)
    info = read_json(ae / "autoencoder.json")
    weights = ae / info["checkpoint"] / "ema.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    err = fails(capsys, "sample", lat, "--out", tmp_path / "x.png")
    assert f"'{weights}' changed after" in err and "scale.json" in err
    shutil.rmtree(ae)
    err = fails(capsys, "sample", lat, "--out", tmp_path / "x.png")
    assert "no trained autoencoder at" in err


# ---- the latent cache ----------------------------------------------------------------------
class Items(torch.utils.data.Dataset):
    num_classes = 3

    def __init__(self, n):
        self.x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % 3


class Encoder:
    def __init__(self, offset=0.0):
        self.calls, self.offset = 0, offset

    def __call__(self, x):
        self.calls += 1
        return x[:, :, :2, :2].repeat(1, 2, 1, 1) + self.offset   # [n, 2, 2, 2]


def _build(folder, n=10, key="a", enc=None, log=None):
    enc = enc or Encoder()
    ds, report = build_latent_cache(folder, Items(n), enc, {"ae": key}, [2, 2, 2], shard_size=4,
                                    log=log or (lambda *a: None))
    return ds, report, enc


def test_cache_is_built_once_then_reused(tmp_path):
    ds, report, enc = _build(tmp_path)
    assert report["encoded"] == 3 and enc.calls == 3 and len(ds) == 10 and ds.num_classes == 3
    assert torch.equal(ds[7][0], torch.full((2, 2, 2), 7.0)) and ds[7][1] == 1
    ds2, report, enc = _build(tmp_path)
    assert report == {**report, "encoded": 0, "reused": 3, "rebuilt": None} and enc.calls == 0
    assert torch.equal(ds2.moments, ds.moments)


def test_stale_key_or_count_rebuilds_and_says_so(tmp_path):
    _build(tmp_path)
    logs = []
    ds, report, enc = _build(tmp_path, key="retrained autoencoder", enc=Encoder(offset=100.0), log=logs.append)
    assert "key_hash" in report["rebuilt"] and enc.calls == 3 and "deleting and re-encoding" in logs[0]
    assert float(ds[0][0].min()) == 100.0   # the new encoder's latents, not the old ones
    ds, report, _ = _build(tmp_path, n=6, key="retrained autoencoder")
    assert "count 10 -> 6" in report["rebuilt"] and len(ds) == 6
    assert len(list(tmp_path.glob("shard_*"))) == 2


def test_damaged_or_foreign_shard_is_reencoded(tmp_path):
    from safetensors.torch import save_file

    _build(tmp_path)
    save_file({"moments": torch.zeros(3, 2, 2, 2), "labels": torch.zeros(3, dtype=torch.int64)},
              str(tmp_path / "shard_00001.safetensors"), metadata={"key_hash": read_json(
                  tmp_path / "manifest.json")["key_hash"]})      # right key, wrong row count
    (tmp_path / "shard_00002.safetensors").write_bytes(b"garbage")
    logs = []
    ds, report, enc = _build(tmp_path, log=logs.append)
    assert report["encoded"] == 2 and report["reused"] == 1
    assert any("holds [3, 2, 2, 2] latents, expected [4, 2, 2, 2]" in m for m in logs)
    assert any("unreadable" in m for m in logs)
    assert torch.equal(ds[5][0], torch.full((2, 2, 2), 5.0))


def test_killed_build_resumes_at_the_missing_shard(tmp_path):
    _build(tmp_path)
    (tmp_path / "shard_00002.safetensors").unlink()
    man = read_json(tmp_path / "manifest.json")
    write_json(tmp_path / "manifest.json", {**man, "complete": False})
    kept = (tmp_path / "shard_00000.safetensors").stat().st_mtime_ns
    ds, report, enc = _build(tmp_path)
    assert report["encoded"] == 1 and report["reused"] == 2 and enc.calls == 1 and len(ds) == 10
    assert (tmp_path / "shard_00000.safetensors").stat().st_mtime_ns == kept
    assert json.loads((tmp_path / "manifest.json").read_text())["complete"]


def test_encoder_giving_the_wrong_shape_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"expected \[4, 2, 2, 2\]"):
        build_latent_cache(tmp_path, Items(8), lambda x: x, {"k": 1}, [2, 2, 2], shard_size=4, log=lambda *a: None)


def test_folder_recipes_on_a_tiny_folder(tmp_path):
    """autoencoder_folder + latent_folder as a user runs them, on 12 generated RGB pictures (train/ and test/
    subfolders) at 32 px (f = 8)."""
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        img = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
        split = "test" if i < 3 else "train"
        (tmp_path / split).mkdir(exist_ok=True)
        Image.fromarray(img).save(tmp_path / split / f"pic_{i}.png")
    data = [f"data.root={tmp_path}", "data.size=32", "data.max_items=0", "train.batch_size=4", "train.num_workers=0"]
    steps = ["train.steps=2", "train.checkpoint_every=2", "train.warmup_steps=1", "train.log_every=1"]
    cli("train", ROOT / "recipes/autoencoder_folder", "--out", tmp_path / "ae", *data, *steps,
        "model.base_channels=8", "model.norm_groups=4", "loss.disc_start=1", "loss.disc_channels=8", "eval.n=3",
        "eval.ssim_window=7")
    assert read_json(tmp_path / "ae/autoencoder.json")["factor"] == 8
    cli("train", ROOT / "recipes/latent_folder", "--out", tmp_path / "lat", f"latent.autoencoder={tmp_path / 'ae'}",
        *data, *steps, "model.image_size=4", "model.base_channels=16", "model.norm_groups=8",
        "model.channel_mult=[1, 2]", "model.attention_resolutions=[2]", "model.num_res_blocks=1", "sample.n=4",
        "sample.steps=2", "eval.n=4", "eval.batch=4", 'eval.table=["ddim:2"]')
    assert read_json(tmp_path / "lat/latents/train/manifest.json")["count"] == 9
    assert Image.open(tmp_path / "lat/samples/final.png").size == (2 * 34 + 2, 2 * 34 + 2)
    assert "no feature extractor" in (tmp_path / "lat/eval.json").read_text()
