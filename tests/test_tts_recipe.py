"""Speech synthesis end to end through the real CLI, on tiny sizes: a tts recipe on a 16-utterance
espeak-ng corpus with a tiny DiffWave vocoder (prepare, train, vocoder fine-tuning, sample,
evaluate), `multidiff say`, the refusals, and tts_ljspeech on a miniature LJSpeech-layout corpus."""
import hashlib
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from multidiff import kinds
from multidiff.cli import main
from multidiff.engine.runs import load_run
from multidiff.modalities.base import load_trained
from multidiff.modalities.tts import TTS
from multidiff.pipelines.say import front_end

ROOT = Path(__file__).parent.parent
TINY_VOCODER = ["model.residual_channels=8", "model.residual_layers=4", "model.dilation_cycle=2", "train.steps=2",
                "train.batch_size=4", "train.checkpoint_every=2", "train.warmup_steps=1", "data.crop_frames=8",
                "train.threads=1"]
TINY_TTS = ["model.encoder_channels=32", "model.encoder_layers=1", "model.encoder_ffn=64", "model.prenet_layers=1",
            "model.duration_channels=32", "model.decoder_channels=[32, 32]", "model.speaker_dim=8",
            "train.steps=3", "train.batch_size=4", "train.warmup_steps=1", "train.checkpoint_every=3",
            "train.log_every=1", "train.threads=1", "sample.steps=2", "eval.n=1", "eval.save_wavs=1",
            'sample.sentences=["Hello world."]']


def cli(*args):
    assert main([str(a) for a in args]) == 0


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tts")
    cli("train", ROOT / "recipes/diffwave_espeak", "--out", tmp / "voc", f"data.root={tmp / 'corpus'}",
        "prep.utterances=16", *TINY_VOCODER, "--skip", "evaluate")
    before = digest(tmp / "voc")
    cli("train", ROOT / "recipes/tts_espeak", "--out", tmp / "tts", f"data.root={tmp / 'corpus'}",
        "prep.utterances=16", *TINY_TTS, f"vocoder.run={tmp / 'voc'}", 'vocoder.recipe=""',
        "vocoder.finetune_steps=2", "vocoder.finetune_batch=4")
    return tmp, before


def test_tts_recipe_prepares_trains_finetunes_samples_and_evaluates(runs):
    tmp, vocoder_digest = runs
    run = tmp / "tts"
    stages = sorted(p.stem for p in (run / "stages").glob("*.json"))
    assert stages == ["evaluate", "finetune_vocoder", "prepare", "sample", "train", "vocoder"]
    assert json.loads((run / "symbols.json").read_text())["add_blank"] is True
    assert len(json.loads((run / "speakers.json").read_text())["speakers"]) == 6
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_duration", "loss_prior", "loss_diffusion"} <= set(metrics[-1])
    ev = json.loads((run / "eval.json").read_text())
    assert ev["splits"] == ["dev", "eval"]
    rows = {(r["split"], r["method"]): r for r in ev["rows"]}
    per_split = ["acoustic model on the real durations vs the real mel (no vocoder, no DTW)"] + [
        m.format(v) for v in ("vocoder", "fine-tuned vocoder") for m in (
            "{} on the real mel (ceiling)", "text -> acoustic model -> {}", "text + the real durations -> acoustic "
            "model -> {}", "{} on the real mel, no mel consistency (ceiling)", "text -> acoustic model -> {}, no mel "
            "consistency")]
    assert list(rows) == [(split, m) for split in ("dev", "eval") for m in per_split]
    for (split, method), r in rows.items():
        assert math.isfinite(r["mcd_dtw"]) and r["mcd_dtw"] > 0
        if "rtf" in r:  # the chain: its gap to the ceiling, split into timing and spectrum by the real-durations row
            vocoder = method.replace("text -> acoustic model -> ", "")
            ceiling = rows[(split, f"{vocoder} on the real mel (ceiling)")]["mcd_dtw"]
            on_real = rows[(split, f"text + the real durations -> acoustic model -> {vocoder}")]["mcd_dtw"]
            assert r["rtf"] > 0 and math.isfinite(r["duration_error_pct"])
            assert r["gap_db"] == pytest.approx(r["mcd_dtw"] - ceiling)
            assert (r["gap_timing_db"], r["gap_spectrum_db"]) == pytest.approx((r["mcd_dtw"] - on_real,
                                                                                on_real - ceiling))
    assert "of which timing (dB)" in (run / "eval.md").read_text()
    for name in ("dev_00_real.wav", "dev_00_vocoder_tts.wav", "eval_00_fine_tuned_vocoder_real_mel.wav",
                 "say/sentence_0001.wav"):
        audio, sr = sf.read(run / "samples" / name)
        assert sr == 22050 and len(audio) > 256
    assert (run / "samples/spectrograms.png").stat().st_size > 5000
    # the fine-tuned vocoder is a run of its own; the user's vocoder run is untouched
    assert (run / "vocoder/config.toml").is_file() and list((run / "vocoder/checkpoints").glob("step_*"))
    assert digest(tmp / "voc") == vocoder_digest
    cli("vocode", run / "vocoder", "--input", next((tmp / "corpus/wavs").glob("*.wav")), "--out", tmp / "ft.wav")


def predicted_frames(run: Path, text: str, speed: float = 1.0) -> int:
    sections = load_run(run, kinds.schema_of)
    trained = load_trained(TTS, sections, run)
    enc = front_end(run, sections).encode([text])[0]
    d, _, _, _ = trained.model.predict_durations(torch.tensor([enc.ids]), torch.tensor([len(enc.ids)]),
                                                 torch.tensor([0]), 1.0 / speed)
    return int(d.sum())


def test_say_writes_a_wav_as_long_as_the_predicted_durations(runs, tmp_path):
    tmp, _ = runs
    run, text = tmp / "tts", "Hello world, this is multidiff."
    cli("say", run, "--vocoder", tmp / "voc", "--text", text, "--out", tmp_path / "hello.wav")
    audio, sr = sf.read(tmp_path / "hello.wav")
    assert sr == 22050 and len(audio) == predicted_frames(run, text) * 256
    cli("say", run, "--text", text, "--out", tmp_path / "fast.wav", "--speed", "2", "--steps", "1")  # fine-tuned
    assert len(sf.read(tmp_path / "fast.wav")[0]) == predicted_frames(run, text, 2.0) * 256
    assert predicted_frames(run, text, 2.0) < predicted_frames(run, text)


def test_say_text_file_one_wav_per_line_or_all_in_one(runs, tmp_path):
    tmp, _ = runs
    run = tmp / "tts"
    lines = ["The birch canoe slid on the smooth planks.", "It costs $5. Really?"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n\n")
    cli("say", run, "--vocoder", tmp / "voc", "--text-file", tmp_path / "in.txt", "--out", f"{tmp_path}/lines/",
        "--speaker", "en-us+m1")
    wavs = sorted((tmp_path / "lines").glob("*.wav"))
    assert [w.name for w in wavs] == ["line_0001.wav", "line_0002.wav"]
    cli("say", run, "--vocoder", tmp / "voc", "--text-file", tmp_path / "in.txt", "--out", tmp_path / "all.wav",
        "--speaker", "en-us+m1")
    pause = int(0.25 * 22050)
    lengths = [len(sf.read(w)[0]) for w in wavs]
    assert len(sf.read(tmp_path / "all.wav")[0]) == sum(lengths) + pause  # the second line: 2 sentences, joined


def test_say_refuses_with_one_message(runs, tmp_path, capsys):
    tmp, _ = runs
    run, voc = tmp / "tts", tmp / "voc"

    def refused(*args, expect):
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert expect in err and "Traceback" not in err, err

    refused("say", run, "--vocoder", voc, "--text", "Hello 你好", "--out", tmp_path / "x.wav", expect="U+4F60")
    refused("say", run, "--vocoder", voc, "--text", "...", "--out", tmp_path / "x.wav", expect="nothing to say")
    refused("say", run, "--vocoder", voc, "--text", "Hi.", "--out", tmp_path / "x.wav", "--speaker", "nobody",
            expect="knows the speakers")
    refused("say", voc, "--vocoder", voc, "--text", "Hi.", "--out", tmp_path / "x.wav", expect="not a text-to-speech")
    refused("say", run, "--vocoder", run, "--text", "Hi.", "--out", tmp_path / "x.wav", expect="not a vocoder run")
    refused("sample", run, "--n", "1", "--out", tmp_path / "x.wav", expect="multidiff say")
    # a vocoder of another mel configuration: refused before anything loads, naming what differs
    other = tmp_path / "voc_hop128"
    other.mkdir()
    text = (voc / "config.toml").read_text().replace("hop_length = 256", "hop_length = 128")
    (other / "config.toml").write_text(text)
    refused("say", run, "--vocoder", other, "--text", "Hi.", "--out", tmp_path / "x.wav",
            expect="hop_length 256 vs 128")
    assert not (tmp_path / "x.wav").exists()


def test_vocode_refuses_tacotron_style_mels_with_the_conversion(runs, tmp_path, capsys):
    tmp, _ = runs
    np.save(tmp_path / "tacotron.npy", (np.random.default_rng(0).random((80, 40)) * 8 - 4).astype(np.float32))
    assert main(["vocode", str(tmp / "voc"), "--input", str(tmp_path / "tacotron.npy"),
                 "--out", str(tmp_path / "t.wav")]) == 2
    err = capsys.readouterr().err
    assert "[-4, 4]" in err and "lmnt-style mels, in [0, 1]" in err and "(x + 4) / 8" in err
    assert not (tmp_path / "t.wav").exists()


def mini_ljspeech(root: Path, n: int = 8) -> Path:
    """LJSpeech-1.1's layout with real speech: metadata.csv (id|raw text|normalised text) and wavs/ spoken by
    espeak-ng at 22.05 kHz."""
    texts = ["Printing, in the only sense with which we are at present concerned,",
             "In 1450 the first books were printed by Gutenberg.",
             "Dr. Smith paid $3 for 2 books.",
             "The invention of movable metal letters in the middle of the 15th century",
             "may justly be considered as the invention of the art of printing.",
             "And it is worth mention in passing that, as an example of fine typography,",
             "the earliest book printed with movable types, the Gutenberg, or forty-two line Bible of about 1455,",
             "has never been surpassed."][:n]
    from multidiff.text import normalize
    (root / "wavs").mkdir(parents=True)
    rows = []
    for k, t in enumerate(texts, 1):
        i = f"LJ001-{k:04d}"
        raw = root / "wavs" / f"{i}.raw.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), t], check=True)
        from multidiff.data.audio import read_audio
        sf.write(root / "wavs" / f"{i}.wav", read_audio(raw, 22050)[0].numpy(), 22050, subtype="PCM_16")
        raw.unlink()
        rows.append(f"{i}|{t}|{normalize(t)}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_tts_ljspeech_recipe_smoke(tmp_path):
    corpus = mini_ljspeech(tmp_path / "LJSpeech-1.1")
    subprocess.run(["python", "-m", "data_prep.ljspeech", "--root", str(corpus), "--holdout", "2", "--mel", "none"],
                   check=True, cwd=ROOT)
    cli("train", ROOT / "recipes/tts_ljspeech", "--out", tmp_path / "run", f"data.root={corpus}",
        *[o for o in TINY_TTS if "speaker" not in o], "train.num_workers=0", 'vocoder.run=""', "eval.splits=[\"dev\"]")
    ev = json.loads((tmp_path / "run/eval.json").read_text())
    assert [r["method"] for r in ev["rows"]] == [  # (Griffin-Lim has no mel consistency to leave out)
        "acoustic model on the real durations vs the real mel (no vocoder, no DTW)",
        "griffin-lim on the real mel (ceiling)", "text -> acoustic model -> griffin-lim",
        "text + the real durations -> acoustic model -> griffin-lim"]
    items = json.loads((tmp_path / "run/tts_data/train.json").read_text())["items"]
    assert items[1]["text"] == "In fourteen fifty the first books were printed by Gutenberg."
