"""Audio data prep: a real espeak-ng corpus in LJSpeech's layout, LJSpeech checks and splits, SC09
selection; idempotent re-runs and the messages users see."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep import espeak_corpus, ljspeech, sc09
from multidiff.data.audio import SC09_WORDS, AudioData, build_audio_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n", "12", "--voices", "en-us+m1", "--eval-voices", "en-gb-scotland+f2", "--eval-fraction", "0.25"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("espeak") / "corpus"
    assert espeak_corpus.main(["--out", str(out), *TINY]) == 0
    return out


def rows(path):
    return [line.split("|") for line in path.read_text().splitlines()]


def parts(text):
    return {s for s in espeak_corpus.SENTENCES if s in text}


def test_espeak_corpus_is_an_ljspeech_folder_with_unseen_voices_and_sentences_in_eval(corpus):
    meta = rows(corpus / "metadata.csv")
    assert len(meta) == 12 and all(len(r) == 3 and r[1] == r[2] for r in meta)
    for r in meta:
        info = sf.info(str(corpus / "wavs" / f"{r[0]}.wav"))
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16") and info.duration > 0.5
    how = {r[0]: r for r in rows(corpus / "utterances.csv")}
    text = {r[0]: r[1] for r in meta}
    split = {s: (corpus / "splits" / f"{s}.txt").read_text().split() for s in ("train", "dev", "eval")}
    assert sorted(sum(split.values(), [])) == sorted(text) and len(split["eval"]) == 3
    voices = {s: {how[i][1] for i in ids} for s, ids in split.items()}
    sentences = {s: set().union(*(parts(text[i]) for i in ids)) for s, ids in split.items()}
    assert voices["train"] == {"en-us+m1"} and voices["eval"] == {"en-gb-scotland+f2"}
    assert not sentences["train"] & (sentences["eval"] | sentences["dev"])  # held-out sentences never trained on
    assert all(parts(t) for t in text.values())
    for s, ids in split.items():
        ds = build_audio_dataset(AudioData(root=str(corpus), crop_frames=0), split=s)
        assert ds.ids == ids
    audio, mel, _ = ds[0]
    assert audio.abs().max() > 0.05 and mel.shape == (80, audio.shape[1] // 256)


def test_espeak_corpus_reruns_skip_and_a_killed_run_resumes_identically(corpus, capsys):
    wavs = sorted((corpus / "wavs").glob("*.wav"))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in wavs}
    assert espeak_corpus.main(["--out", str(corpus), *TINY]) == 0
    out = capsys.readouterr().out
    assert "all 12 present" in out and "up to date, skipping" in out
    assert {p.name: p.stat().st_mtime_ns for p in wavs} == {k: v[0] for k, v in before.items()}
    # a run killed before finishing: one wav and the metadata missing, a temp file left behind
    wavs[4].unlink()
    (corpus / "metadata.csv").unlink()
    (corpus / "wavs" / f".{wavs[4].name}.k1ll3d.tmp.wav").write_bytes(b"RIFF half a file")
    assert espeak_corpus.main(["--out", str(corpus), *TINY]) == 0
    out = capsys.readouterr().out
    assert "speaking 1 utterance(s)" in out and "written" in out
    assert wavs[4].read_bytes() == before[wavs[4].name][1]  # deterministic
    assert not list((corpus / "wavs").glob(".*"))
    assert espeak_corpus.main(["--out", str(corpus), *TINY[:-2]]) == 1  # other options into the same folder
    assert "eval_fraction: 0.25 -> 0.1" in capsys.readouterr().err


def test_espeak_corpus_messages(tmp_path, monkeypatch, capsys):
    assert espeak_corpus.main(["--out", str(tmp_path / "a"), "--n", "6", "--voices", "en-us+m1",
                               "--eval-voices", "en-klingon"]) == 1
    assert "no voice 'en-klingon'" in capsys.readouterr().err
    assert espeak_corpus.main(["--out", str(tmp_path / "b"), "--voices", "en-us", "--eval-voices", "en-us"]) == 1
    assert "both --voices and --eval-voices" in capsys.readouterr().err
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no espeak-ng anywhere on PATH
    assert espeak_corpus.main(["--out", str(tmp_path / "c"), *TINY]) == 1
    err = capsys.readouterr().err
    assert "espeak-ng is not installed" in err and "apt-get install espeak-ng" in err
    assert not (tmp_path / "c").exists()


def test_ljspeech_prep_checks_splits_and_caches_mels(corpus, tmp_path, capsys):
    root = tmp_path / "LJSpeech-1.1"
    shutil.copytree(corpus, root, ignore=shutil.ignore_patterns("splits"))
    assert ljspeech.main(["--root", str(root), "--holdout", "4"]) == 0
    out = capsys.readouterr().out
    assert "checked 12 clips" in out and "computed 12" in out
    ids = [r[0] for r in rows(root / "metadata.csv")]
    read = {s: (root / "splits" / f"{s}.txt").read_text().split() for s in ("train", "dev", "eval")}
    assert read == {"train": ids[:8], "dev": ids[8:10], "eval": ids[10:]}
    assert len(list((root / "mel_cache").glob("*.npy"))) == 12
    assert ljspeech.main(["--root", str(root), "--holdout", "4"]) == 0
    out = capsys.readouterr().out
    assert "present" in out and "already cached" in out and "skipping" in out
    # the dataset finds the precomputed mels: nothing left to compute
    ds = build_audio_dataset(AudioData(root=str(root), cache_dir=str(root / "mel_cache")), split="dev")
    assert len(ds) == 2 and len(list((root / "mel_cache").glob("*.npy"))) == 12
    # the corpus' own speaker-aware splits are kept
    assert ljspeech.main(["--root", str(corpus), "--mel", "none"]) == 0
    assert "present" in capsys.readouterr().out and len((corpus / "splits" / "eval.txt").read_text().split()) == 3


def test_ljspeech_prep_reports_bad_folders(tmp_path, capsys):
    assert ljspeech.main(["--root", str(tmp_path / "nothing")]) == 1
    assert "LJSpeech-1.1.tar.bz2" in capsys.readouterr().err
    root = tmp_path / "lj"
    (root / "wavs").mkdir(parents=True)
    (root / "metadata.csv").write_text("".join(f"LJ{i}|t {i}|t {i}\n" for i in range(4)))
    for i in range(3):
        sf.write(str(root / "wavs" / f"LJ{i}.wav"), np.full(4000, 0.1, np.float32), 16000 if i == 1 else 22050,
                 subtype="PCM_16")
    assert ljspeech.main(["--root", str(root), "--holdout", "2"]) == 1
    err = capsys.readouterr().err
    assert "2 of the 4 clips" in err and "LJ3.wav: missing" in err and "LJ1.wav: 16000 Hz" in err
    assert not (root / "splits").exists()


def make_speech_commands(root):
    for w in SC09_WORDS + ("yes", "_background_noise_"):
        (root / w).mkdir(parents=True)
        for i in range(3):
            t = np.arange(16000 if i else 12000) / 16000
            tone = (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32)
            sf.write(str(root / w / f"spk{i}_nohash_0.wav"), tone, 16000, subtype="PCM_16")
    (root / "validation_list.txt").write_text("".join(f"{w}/spk1_nohash_0.wav\n" for w in SC09_WORDS + ("yes",)))
    (root / "testing_list.txt").write_text("".join(f"{w}/spk2_nohash_0.wav\n" for w in SC09_WORDS + ("yes",)))
    (root / "LICENSE").write_text("CC BY 4.0\n")
    return root


def test_sc09_selects_the_digits_and_filters_the_lists(tmp_path, capsys):
    src = make_speech_commands(tmp_path / "speech_commands")
    out = tmp_path / "sc09"
    assert sc09.main(["--src", str(src), "--out", str(out)]) == 0
    assert "30 linked" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(SC09_WORDS)
    assert (out / "three" / "spk0_nohash_0.wav").is_symlink() and (out / "LICENSE").is_file()
    assert "yes" not in (out / "validation_list.txt").read_text()
    assert len((out / "testing_list.txt").read_text().split()) == 10
    sizes = [len(build_audio_dataset(AudioData(layout="sc09", root=str(out), sample_rate=16000), split=s))
             for s in ("train", "dev", "eval")]
    assert sizes == [10, 10, 10]
    assert sc09.main(["--src", str(src), "--out", str(out)]) == 0
    assert "all already in" in capsys.readouterr().out
    copied = tmp_path / "sc09_copy"
    assert sc09.main(["--src", str(src), "--out", str(copied), "--mode", "copy"]) == 0
    wav = copied / "nine" / "spk2_nohash_0.wav"
    assert wav.is_file() and not wav.is_symlink() and wav.read_bytes() == (src / "nine" / wav.name).read_bytes()


def test_sc09_messages(tmp_path, capsys):
    assert sc09.main(["--src", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 1
    assert "speech_commands_v0.02.tar.gz" in capsys.readouterr().err
    src = make_speech_commands(tmp_path / "sc")
    shutil.rmtree(src / "seven")
    assert sc09.main(["--src", str(src), "--out", str(tmp_path / "o")]) == 1
    assert "lacks the word folder(s) seven" in capsys.readouterr().err


def test_scripts_run_as_modules_with_help(capsys):
    for mod in (espeak_corpus, ljspeech, sc09):
        with pytest.raises(SystemExit) as e:
            mod.main(["--help"])
        assert e.value.code == 0 and "usage: python -m data_prep." in capsys.readouterr().out
    r = subprocess.run([sys.executable, "-m", "data_prep.espeak_corpus", "--help"], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0 and "--eval-voices" in r.stdout
