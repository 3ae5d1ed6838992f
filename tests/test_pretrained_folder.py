"""A pretrained model in diffusers' format opens as a run (issue 17, part 1), checked without any download:
small UNet2DModels with random weights are saved with save_pretrained, in the layouts a user's download
has (a DDPM pipeline folder; a flat UNet folder with its scheduler_config.json; a bare UNet folder).

  * our ddim on the folder's levels equals diffusers' DDIMPipeline (same noise, same steps, eta = 0) to
    float tolerance, for eps / v / x0 prediction, linear / squaredcos_cap_v2 / scaled_linear betas,
    leading / trailing spacing, steps_offset and clip_sample -- through `generate` and through the CLI;
  * `multidiff inpaint FOLDER` keeps the known pixels bit-exact, also with --crop-to-mask;
  * every folder we cannot use is one line (exit 2) saying what is supported; pickled weights are never
    unpickled.
"""
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# diffusers: the `dev` extra (CI installs it), the reference this loader is checked against
from diffusers import (DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, ScoreSdeVeScheduler,
                       UNet2DModel)

from multidiff import kinds  # noqa: E402
from multidiff.cli import main  # noqa: E402
from multidiff.core import Schedule  # noqa: E402
from multidiff.models.diffusers_unet import SUPPORTED  # noqa: E402
from multidiff.pipelines.generate import generate  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 32


def tiny_unet(seed=0, **kw) -> UNet2DModel:
    torch.manual_seed(seed)
    cfg = dict(sample_size=SIZE, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
               down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
               norm_num_groups=8)
    return UNet2DModel(**{**cfg, **kw}).eval()


# name -> the scheduler saved with the UNet (None: a bare UNet folder, diffusers' DDPM defaults assumed)
SCHEDULERS = {
    "ddpm_pipeline": DDPMScheduler(),  # google/ddpm-*: linear, epsilon, clip_sample = True
    "cosine_v": DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False),
    "scaled_x0_trailing": DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        prediction_type="sample", clip_sample=False, timestep_spacing="trailing"),
    "offset": DDIMScheduler(clip_sample=False, steps_offset=1, prediction_type="v_prediction"),
    "bare": None,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folders")
    out = {}
    for i, (name, sched) in enumerate(SCHEDULERS.items()):
        d = tmp / name
        unet = tiny_unet(seed=i)
        if name == "ddpm_pipeline":
            DDPMPipeline(unet, sched).save_pretrained(d, safe_serialization=True)  # model_index.json, unet/, scheduler/
        else:
            unet.save_pretrained(d, safe_serialization=True)                      # config.json + safetensors
            if sched is not None:
                sched.save_pretrained(d)                                          # scheduler_config.json beside them
        out[name] = d
    return out


def unet_dir(folder: Path) -> Path:
    return folder / "unet" if (folder / "unet").is_dir() else folder


def pipeline(folder: Path) -> DDIMPipeline:
    sched_dir = folder / "scheduler" if (folder / "scheduler").is_dir() else folder
    sched = DDIMScheduler.from_pretrained(sched_dir) if (sched_dir / "scheduler_config.json").is_file() \
        else DDPMScheduler()
    pipe = DDIMPipeline(UNet2DModel.from_pretrained(unet_dir(folder)), sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def refused(capsys, *args) -> str:
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"multidiff {args[0]}: error: "), err
    return err[0]


# ---- sampling equals diffusers' DDIMPipeline --------------------------------------------------------
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_ddim_equals_diffusers_pipeline(folders, name):
    """Same noise (the generator's first draw), same steps, eta = 0: our ddim over the folder's levels
    = DDIMPipeline, to float32 tolerance. Where the scheduler clips x0 (clip_sample), ours re-derives eps
    from the clipped x0, i.e. diffusers' use_clipped_model_output=True."""
    folder = folders[name]
    sections = kinds.open_run(folder)
    trained = kinds.kind_of(sections).model(folder, sections, "plain").load()
    cfg = sections["sample"]
    assert (cfg.sampler, cfg.steps, cfg.eta) == ("ddim", 50, -1.0)  # (ddim's default eta: 0)
    cfg.steps = 10
    ours = generate(trained, 2, cfg, torch.device("cpu"), False, progress=False)
    clipped = cfg.clip_x0 > 0
    assert clipped == (name in ("ddpm_pipeline", "bare"))
    theirs = pipeline(folder)(batch_size=2, generator=torch.Generator().manual_seed(cfg.seed), eta=0.0,
                              num_inference_steps=10, use_clipped_model_output=clipped or None,
                              output_type="pt").images
    ours01 = ours / 2 + 0.5
    assert ours01.shape == theirs.shape == (2, 3, SIZE, SIZE)
    err = float((ours01 - theirs).abs().max())
    assert err < 5e-5, err
    inside = float(((theirs > 0.01) & (theirs < 0.99)).float().mean())
    assert inside > (0.05 if clipped else 0.5), inside  # not a comparison of saturated pixels only


def test_cli_sample_equals_pipeline_png(folders, tmp_path):
    """`multidiff sample FOLDER` with the folder's defaults (ddim, 50 steps, eta 0) writes DDIMPipeline's image."""
    folder = folders["ddpm_pipeline"]
    assert main(["sample", str(folder), "--n", "1", "--precision", "fp32", "--out", f"{tmp_path}/out/"]) == 0
    ours = np.asarray(Image.open(tmp_path / "out" / "sample_0000.png")).astype(int)
    theirs = pipeline(folder)(generator=torch.Generator().manual_seed(0), num_inference_steps=50,
                              use_clipped_model_output=True, output_type="np").images[0]
    theirs = (theirs * 255).round().astype(int)
    assert ours.shape == theirs.shape == (SIZE, SIZE, 3)
    assert np.abs(ours - theirs).max() <= 1 and (ours == theirs).mean() > 0.99


def test_cli_ddpm_equals_ddpm_pipeline(folders, tmp_path):
    """`--sampler ddpm`: the scheduler's variance_type (fixed_small: our 'posterior') and clip_sample carry over;
    initial noise and every step's noise come from one generator on both sides, so DDPMPipeline's image."""
    folder = folders["ddpm_pipeline"]
    assert main(["sample", str(folder), "--n", "1", "--sampler", "ddpm", "--steps", "20", "--precision", "fp32",
                 "--seed", "3", "--out", f"{tmp_path}/out/"]) == 0
    ours = np.asarray(Image.open(tmp_path / "out" / "sample_0000.png")).astype(int)
    pipe = DDPMPipeline(UNet2DModel.from_pretrained(folder / "unet"),
                        DDPMScheduler.from_pretrained(folder / "scheduler"))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(generator=torch.Generator().manual_seed(3), num_inference_steps=20, output_type="np").images[0]
    theirs = (theirs * 255).round().astype(int)
    assert np.abs(ours - theirs).max() <= 1 and (ours == theirs).mean() > 0.99


def test_schedules_are_diffusers_betas(folders):
    """The levels are diffusers' own betas; squaredcos_cap_v2 is our cosine (s = 0.008, max beta 0.999) up to
    diffusers' float32 rounding, and the prediction types map to ours."""
    for name, sched in SCHEDULERS.items():
        s = kinds.open_run(folders[name])
        ref = sched if sched is not None else DDPMScheduler()
        ours = s["diffusion"].build_schedule()
        assert torch.equal(ours.betas, ref.betas.double())
        assert s["diffusion"].prediction == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[
            ref.config.prediction_type]
    cos = kinds.open_run(folders["cosine_v"])["diffusion"]
    assert cos.schedule == "cosine"
    torch.testing.assert_close(cos.build_schedule().alphas_cumprod, Schedule.cosine(1000).alphas_cumprod,
                               rtol=2e-5, atol=1e-7)


def test_steps_offset_gives_diffusers_timesteps(folders):
    folder = folders["offset"]
    s = kinds.open_run(folder)
    kw = kinds.kind_of(s).base.sampling(s, "ddim", 10, "leading")
    ref = DDIMScheduler.from_pretrained(folder)
    ref.set_timesteps(10)
    assert kw["timesteps"].tolist() == ref.timesteps.double().tolist() and "spacing" not in kw


# ---- inpainting ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("picture")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(tmp / "in.png")
    hole = np.zeros((SIZE, SIZE), dtype=np.uint8)
    hole[8:20, 10:26] = 255
    Image.fromarray(hole).save(tmp / "mask.png")
    return tmp


@pytest.mark.parametrize("method", ["replace", "repaint"])
def test_inpaint_keeps_known_pixels(folders, picture, tmp_path, method):
    out = tmp_path / "out.png"
    assert main(["inpaint", str(folders["ddpm_pipeline"]), "--image", str(picture / "in.png"), "--mask",
                 str(picture / "mask.png"), "--method", method, "--steps", "6", "--precision", "fp32",
                 "--out", str(out)]) == 0
    before, after = np.asarray(Image.open(picture / "in.png")), np.asarray(Image.open(out))
    hole = np.asarray(Image.open(picture / "mask.png")) > 127
    assert after.shape == before.shape
    assert np.array_equal(after[~hole], before[~hole])
    assert (after[hole] != before[hole]).mean() > 0.5


def test_inpaint_crop_to_mask_on_a_folder(folders, tmp_path):
    """A picture larger than the model: only the hole changes, at the picture's own size."""
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    hole = np.zeros((120, 160), dtype=bool)
    hole[50:62, 100:118] = True
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    assert main(["inpaint", str(folders["cosine_v"]), "--image", str(tmp_path / "photo.png"), "--mask",
                 str(tmp_path / "mask.png"), "--crop-to-mask", "--method", "replace", "--steps", "4",
                 "--out", str(out)]) == 0
    after = np.asarray(Image.open(out))
    assert after.shape == photo.shape
    assert np.array_equal(after[~hole], photo[~hole]) and (after[hole] != photo[hole]).any()


def test_class_conditional_folder(tmp_path, capsys):
    """num_class_embeds: labels reach the UNet; it has no null class, so guidance is refused in one line."""
    d = tmp_path / "classes"
    tiny_unet(num_class_embeds=3).save_pretrained(d, safe_serialization=True)
    s = kinds.open_run(d)
    assert s["model"].num_classes == 3
    assert main(["sample", str(d), "--n", "2", "--steps", "3", "--class", "2", "--out", str(tmp_path / "a.png")]) == 0
    capsys.readouterr()
    assert main(["sample", str(d), "--n", "2", "--steps", "3", "--class", "1", "--guidance", "2",
                 "--out", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the model's note and the progress bar)
    assert err.startswith("multidiff sample: error: ") and "no null class" in err
    assert not (tmp_path / "b.png").exists()


# ---- folders we cannot use -------------------------------------------------------------------------
def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def unet_config(**kw) -> dict:
    cfg = {k: v for k, v in tiny_unet().config.items() if not k.startswith("_")}
    return {"_class_name": "UNet2DModel", **cfg, **kw}


class Touch:
    """A pickle that creates a file when it is unpickled: proof that a .bin is never loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def bad_folders(tmp: Path) -> dict:
    cases = {}
    d = tmp / "sd"  # a text-to-image pipeline
    write_json(d / "model_index.json", {"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers",
               "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers",
               "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers",
               "PNDMScheduler"], "safety_checker": [None, None]})
    write_json(d / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768})
    cases["sd"] = (d, "text-to-image")
    d = tmp / "cond_unet"  # its UNet alone
    write_json(d / "config.json", {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768})
    (d / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    cases["cond_unet"] = (d, "text-to-image")
    d = tmp / "vae"
    write_json(d / "config.json", {"_class_name": "AutoencoderKL", "latent_channels": 4})
    (d / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    cases["vae"] = (d, "autoencoder (VAE) only")
    d = tmp / "ldm"  # a latent-diffusion pipeline: UNet2DModel + VQ-VAE
    write_json(d / "model_index.json", {"_class_name": "LDMPipeline", "unet": ["diffusers", "UNet2DModel"],
                                        "vqvae": ["diffusers", "VQModel"], "scheduler": ["diffusers", "DDIMScheduler"]})
    cases["ldm"] = (d, "latent-diffusion")
    d = tmp / "pickled"
    write_json(d / "config.json", unet_config())
    (d / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Touch(tmp / "UNPICKLED")))
    cases["pickled"] = (d, "pickled weights only")
    d = tmp / "no_config"
    d.mkdir()
    (d / "model.ckpt").write_bytes(pickle.dumps(Touch(tmp / "UNPICKLED")))
    cases["no_config"] = (d, "no UNet config.json")
    d = tmp / "mismatch"  # the config of another model than the weights
    tiny_unet().save_pretrained(d, safe_serialization=True)
    write_json(d / "config.json", unet_config(block_out_channels=[16, 64]))
    cases["mismatch"] = (d, "do not fit")
    d = tmp / "ve"  # a score-SDE scheduler: no betas
    tiny_unet().save_pretrained(d, safe_serialization=True)
    ScoreSdeVeScheduler().save_pretrained(d)
    cases["ve"] = (d, "no discrete beta schedule")
    d = tmp / "latent_unet"
    write_json(d / "config.json", unet_config(in_channels=4, out_channels=4))
    (d / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    cases["latent_unet"] = (d, "in_channels = 4")
    d = tmp / "damaged"
    write_json(d / "config.json", unet_config())
    (d / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    cases["damaged"] = (d, "damaged or not a safetensors file")
    return cases


def test_unusable_folders_get_one_message(tmp_path, capsys):
    Image.new("RGB", (SIZE, SIZE)).save(tmp_path / "in.png")
    for name, (folder, words) in bad_folders(tmp_path).items():
        for cmd in (["sample", folder, "--n", "1", "--out", tmp_path / "x.png"],
                    ["inpaint", folder, "--image", tmp_path / "in.png", "--mask-kind", "center",
                     "--out", tmp_path / "x.png"]):
            err = refused(capsys, *cmd)
            assert words in err, (name, err)
            if name not in ("mismatch", "damaged"):  # (those name the file and its fix instead)
                assert SUPPORTED in err, (name, err)
        assert not (tmp_path / "x.png").exists()
    assert not (tmp_path / "UNPICKLED").exists()


def test_without_diffusers_the_extra_is_named(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` raises ImportError
    err = refused(capsys, "sample", folders["bare"], "--n", "1", "--out", tmp_path / "x.png")
    assert "pip install -e '.[diffusers]'" in err
    # a folder we could not use anyway is named as such without diffusers
    write_json(tmp_path / "vae" / "config.json", {"_class_name": "AutoencoderKL"})
    assert "VAE" in refused(capsys, "sample", tmp_path / "vae", "--n", "1", "--out", tmp_path / "x.png")


def test_an_empty_folder_keeps_the_run_message(tmp_path, capsys):
    """A plain folder that is neither a run nor a model folder keeps the run directory's message."""
    (tmp_path / "empty").mkdir()
    err = refused(capsys, "sample", tmp_path / "empty", "--n", "1", "--out", tmp_path / "x.png")
    assert "not a multidiff run directory" in err
