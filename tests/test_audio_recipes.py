"""Audio recipes end to end through the real CLI: a tiny vocoder on a real espeak-ng corpus and a
tiny unconditional model on SC09-layout spoken digits."""
import json
import math
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
import torch

from multidiff.cli import main
from multidiff.core import Schedule
from multidiff.recipes.audio import FAST_BETAS, levels_kwargs

ROOT = Path(__file__).parent.parent
TINY = ["model.residual_channels=8", "model.residual_layers=4", "model.dilation_cycle=2", "train.steps=4",
        "train.batch_size=4", "train.checkpoint_every=2", "train.warmup_steps=1", "train.log_every=1"]


def cli(*args):
    assert main([str(a) for a in args]) == 0


@pytest.fixture(scope="module")
def vocoder_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vocoder")
    cli("train", ROOT / "recipes/diffwave_espeak", "--out", tmp / "run", f"data.root={tmp / 'corpus'}",
        "prep.utterances=16", *TINY, "data.crop_frames=8", "eval.n=2", "eval.steps=[6, 10]", "eval.save_wavs=1",
        "eval.griffin_lim_iters=4")
    return tmp


def test_vocoder_recipe_builds_its_corpus_trains_and_evaluates(vocoder_run):
    run = vocoder_run / "run"
    assert (vocoder_run / "corpus/metadata.csv").exists() and (vocoder_run / "corpus/splits/eval.txt").exists()
    ev = json.loads((run / "eval.json").read_text())
    assert ev["split"] == "eval"
    assert [r["method"] for r in ev["rows"]] == ["diffwave_6", "diffwave_10", "griffin_lim"]
    assert all(math.isfinite(r["log_mel_db"]) and r["rtf"] > 0 for r in ev["rows"])
    for name in ("00_original.wav", "00_diffwave_6.wav", "00_griffin_lim.wav"):
        audio, sr = sf.read(run / "samples" / name)
        assert sr == 22050 and len(audio) > 1000


def test_fast_schedule_uses_the_aligned_fractional_steps():
    from multidiff.train.diffusion import DiffusionConfig

    s = {"diffusion": DiffusionConfig(timesteps=50, beta_start=1e-4, beta_end=0.05)}
    kw = levels_kwargs(s, 6)
    assert torch.allclose(kw["timesteps"], torch.tensor([42.9186, 22.9925, 10.4518, 4.0867, 0.8941, 0.0],
                                                        dtype=torch.float64), atol=5e-5)
    assert torch.allclose(kw["sigmas"], Schedule.from_betas(FAST_BETAS).sigmas.flip(0))


def test_vocode_command_single_batch_and_chunked(vocoder_run, tmp_path):
    run = vocoder_run / "run"
    wav = next((vocoder_run / "corpus/wavs").glob("*.wav"))
    cli("vocode", run, "--input", wav, "--out", tmp_path / "one.wav")
    one, sr = sf.read(tmp_path / "one.wav")
    assert sr == 22050 and abs(len(one) - len(sf.read(wav)[0])) < 256
    cli("vocode", run, "--input", wav, wav, "--out", f"{tmp_path}/many/", "--chunk-frames", 20)
    assert len(list((tmp_path / "many").glob("*.wav"))) == 1  # same name twice -> one file, rewritten
    import numpy as np

    np.save(tmp_path / "mel.npy", np.zeros((80, 30), np.float32))
    cli("vocode", run, "--input", tmp_path / "mel.npy", "--out", tmp_path / "mel.wav")
    assert len(sf.read(tmp_path / "mel.wav")[0]) == 30 * 256
    np.save(tmp_path / "bad.npy", np.zeros((40, 30), np.float32))
    assert main(["vocode", str(run), "--input", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "x.wav")]) == 2


def test_audio_inpainting_keeps_everything_outside_the_gap(vocoder_run, tmp_path):
    run = vocoder_run / "run"
    wav = next((vocoder_run / "corpus/wavs").glob("*.wav"))
    cli("inpaint", run, "--input", wav, "--gap", "0.30:0.40", "--out", tmp_path / "filled.wav")
    src, sr = sf.read(wav)
    out, _ = sf.read(tmp_path / "filled.wav")
    keep = list(range(0, int(0.3 * sr))) + list(range(int(0.4 * sr) + 1, len(out)))
    assert abs(out[keep] - src[keep]).max() < 1e-3  # 16-bit WAV round trip
    assert main(["inpaint", str(run), "--input", str(wav), "--gap", "9:10", "--out", str(tmp_path / "x.wav")]) == 2


def test_unconditional_audio_recipe_on_spoken_digits(tmp_path):
    """SC09 layout: the ten digit words spoken by espeak-ng at 16 kHz, validation/testing lists."""
    root = tmp_path / "sc09"
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for i, w in enumerate(words):
        for k, voice in enumerate(["en", "en-us"]):
            d = root / w
            d.mkdir(parents=True, exist_ok=True)
            raw = tmp_path / f"{w}{k}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), w], check=True)
            audio, sr = sf.read(raw)
            from multidiff.data.audio import read_audio

            sf.write(d / f"spk{k}_nohash_0.wav", read_audio(raw, 16000)[0].numpy(), 16000)
    (root / "validation_list.txt").write_text("zero/spk1_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("one/spk1_nohash_0.wav\n")
    cli("train", ROOT / "recipes/diffwave_sc09_uncond", "--out", tmp_path / "run", f"data.root={root}", *TINY,
        "diffusion.timesteps=20", "model.max_steps=20", "train.num_workers=0", "eval.n=2", "eval.steps=[5]")
    assert len(list((tmp_path / "run/samples").glob("*.wav"))) == 2
    cli("sample", tmp_path / "run", "--n", 2, "--steps", 4, "--out", f"{tmp_path}/gen/")
    audio, sr = sf.read(tmp_path / "gen/sample_0000.wav")
    assert sr == 16000 and len(audio) == 16000 // 256 * 256
