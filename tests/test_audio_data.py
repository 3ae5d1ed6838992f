"""Audio data: mel features against their references, reading and its errors, the three layouts,
the mel cache, aligned reproducible crops."""
import os

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

import multidiff.data.audio as audio_mod
from multidiff.data.audio import (SC09_WORDS, AudioData, AudioDataError, build_audio_dataset, collate, random_crop,
                                  read_audio)
from multidiff.data.mel import MelConfig, mel_spectrogram, silence_mel

SR, HOP = 22050, 256


def speechish(n, sr=SR, seed=0):
    """A voiced-sounding test signal: a gliding harmonic tone with a syllable-rate envelope and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    x *= 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.25 * x / np.abs(x).max() + 0.01 * rng.standard_normal(n)).astype(np.float32)


def tone(n, sr=SR, f=440.0, amp=0.3):
    return (amp * np.sin(2 * np.pi * f * np.arange(n) / sr)).astype(np.float32)


def write(path, x, sr=SR, subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype=subtype)
    return path


# ---------------------------------------------------------------------------------------- mel

@pytest.mark.parametrize("length", [HOP * 40, HOP * 40 + 77])
def test_lmnt_mel_equals_the_installed_diffwave_preprocess(tmp_path, monkeypatch, length):
    import diffwave.preprocess as dp
    pcm = (speechish(length) * 32767).astype(np.int16)
    wav = write(tmp_path / "clip.wav", pcm, subtype="PCM_16")
    # diffwave calls torchaudio.load_wav, gone from torchaudio 2.x: give it back, returning what it returned
    # (int16 values as float, shape [C, L]); everything else runs as installed.
    monkeypatch.setattr(torchaudio, "load_wav", lambda f: (torch.from_numpy(sf.read(f, dtype="int16")[0])
                                                           .float()[None], SR), raising=False)
    dp.transform(str(wav))
    ref = torch.from_numpy(np.load(f"{wav}.spec.npy"))
    ours = mel_spectrogram(torch.from_numpy(pcm.astype(np.float32) / 32767.5)[None], MelConfig())
    assert ref.shape == (80, length // HOP + 1)  # torchaudio's extra centered frame at sample L, which we drop
    assert ours.shape == (80, length // HOP)
    torch.testing.assert_close(ours, ref[:, :length // HOP], atol=1e-6, rtol=0)
    assert MelConfig() == MelConfig.preset("lmnt")


def hifigan_reference(x, sr=SR, n_fft=1024, hop=256, win=1024, n_mels=80, fmin=0.0, fmax=8000.0):
    """HiFi-GAN's meldataset.mel_spectrogram written out with numpy and librosa's mel basis."""
    pad = (n_fft - hop) // 2
    x = np.pad(x.astype(np.float64), pad, mode="reflect")
    frames = 1 + (len(x) - n_fft) // hop
    window = np.zeros(n_fft)
    window[(n_fft - win) // 2:(n_fft - win) // 2 + win] = librosa.filters.get_window("hann", win, fftbins=True)
    spec = np.fft.rfft(np.stack([x[i * hop:i * hop + n_fft] * window for i in range(frames)]), axis=1).T
    mag = np.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)  # slaney scale and norm
    return np.log(np.maximum(basis @ mag, 1e-5))


def test_hifigan_mel_matches_a_numpy_librosa_reference():
    x = speechish(HOP * 50 + 31)
    ours = mel_spectrogram(torch.from_numpy(x)[None], MelConfig.preset("hifigan"))
    ref = hifigan_reference(x)
    assert ours.shape == ref.shape == (80, len(x) // HOP)
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-4, rtol=0)
    assert torch.allclose(silence_mel(MelConfig.preset("hifigan")), torch.tensor(np.log(1e-5), dtype=torch.float32))


@pytest.mark.parametrize("style", ["lmnt", "hifigan"])
def test_frames_are_whole_hops_and_frame_j_belongs_to_samples_of_hop_j(style):
    cfg = MelConfig.preset(style)
    for length in (HOP * 12, HOP * 12 + 1, HOP * 13 - 1):
        assert mel_spectrogram(torch.zeros(1, length) + 0.1, cfg).shape == (80, length // HOP)
    batch = torch.from_numpy(np.stack([speechish(HOP * 12, seed=s) for s in range(3)]))[:, None]
    out = mel_spectrogram(batch, cfg)
    assert out.shape == (3, 80, 12)
    torch.testing.assert_close(out[1], mel_spectrogram(batch[1], cfg), atol=1e-5, rtol=0)
    # a click is seen most in the frame that owns it: lmnt frames are centered on sample j * hop,
    # hifigan frames on the middle of hop j
    for j in (3, 7):
        x = torch.zeros(1, HOP * 12)
        x[0, j * HOP + (0 if style == "lmnt" else HOP // 2)] = 1.0
        energy = mel_spectrogram(x, cfg).exp().sum(0) if style == "hifigan" else mel_spectrogram(x, cfg).sum(0)
        assert int(energy.argmax()) == j
    with pytest.raises(ValueError, match="too short"):
        mel_spectrogram(torch.zeros(1, 100), cfg)
    with pytest.raises(ValueError, match="mono"):
        mel_spectrogram(torch.zeros(2, 4096), cfg)


def test_mel_config_rejects_nonsense():
    with pytest.raises(ValueError, match="style"):
        MelConfig(style="tacotron")
    with pytest.raises(ValueError, match="f_max"):
        MelConfig(f_max=20000.0)
    with pytest.raises(ValueError, match="hop_length <= win_length"):
        MelConfig(win_length=2048)


# ---------------------------------------------------------------------------------------- read_audio

def test_read_audio_wav_flac_stereo_and_clamp(tmp_path):
    x = speechish(SR // 2)
    a = read_audio(write(tmp_path / "a.wav", x), SR)
    b = read_audio(write(tmp_path / "b.flac", x), SR)
    assert a.shape == b.shape == (1, SR // 2) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, atol=1.01 / 32768, rtol=0)  # libsndfile rounds to 16 bits per format
    torch.testing.assert_close(a[0], torch.from_numpy(x), atol=1 / 32768, rtol=0)
    stereo = np.stack([x, 0.5 * tone(SR // 2)], axis=1)
    c = read_audio(write(tmp_path / "c.wav", stereo, subtype="FLOAT"), SR)
    torch.testing.assert_close(c[0], torch.from_numpy(stereo.mean(1)), atol=1e-6, rtol=0)
    loud = read_audio(write(tmp_path / "d.wav", 1.5 * tone(SR // 2, amp=1.0), subtype="FLOAT"), SR)
    assert loud.abs().max() == 1.0


def test_read_audio_resamples_16k_or_refuses_naming_file_and_rate(tmp_path):
    path = write(tmp_path / "sixteen.wav", tone(16000, sr=16000, f=440.0), sr=16000)
    x = read_audio(path, SR)
    assert x.shape == (1, SR)
    spectrum = np.abs(np.fft.rfft(x[0].numpy()))
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 s long: bin k is k Hz
    with pytest.raises(AudioDataError) as e:
        read_audio(path, SR, resample=False)
    assert "sixteen.wav" in str(e.value) and "16000 Hz" in str(e.value) and "data.resample" in str(e.value)


@pytest.mark.parametrize("case, message", [
    ("corrupt", "not a readable audio file"), ("empty", "zero length"), ("silent", "silent"),
    ("short", "shorter than the 0.5 s minimum"), ("missing", "does not exist"), ("nan", "NaN")])
def test_read_audio_errors_name_the_file_and_the_problem(tmp_path, case, message):
    path = tmp_path / f"{case}.wav"
    if case == "corrupt":
        path.write_bytes(b"RIFF\x00\x01garbage" + os.urandom(500))
    elif case == "empty":
        write(path, np.zeros(0, np.float32))
    elif case == "silent":
        write(path, np.zeros(SR, np.float32))
    elif case == "short":
        write(path, tone(SR // 10))
    elif case == "nan":
        write(path, np.full(SR, np.nan, np.float32), subtype="FLOAT")
    with pytest.raises(AudioDataError, match=message) as e:
        read_audio(path, SR, min_seconds=0.5)
    assert str(path) in str(e.value)


def test_bad_files_raise_or_are_skipped_and_counted(tmp_path):
    root = tmp_path / "clips"
    for i in range(3):
        write(root / f"good{i}.wav", speechish(SR // 2, seed=i))
    (root / "corrupt.wav").write_bytes(b"not audio at all" * 10)
    write(root / "empty.wav", np.zeros(0, np.float32))
    write(root / "silent.wav", np.zeros(SR // 2, np.float32))
    write(root / "short.wav", tone(SR // 50))
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("\n".join(p.name for p in root.glob("*.wav")))
    with pytest.raises(AudioDataError, match='corrupt.wav.*on_error = "skip"'):
        build_audio_dataset(AudioData(layout="folder", root=str(root)))
    with pytest.warns(UserWarning, match="skipped 4 unusable audio file"):
        ds = build_audio_dataset(AudioData(layout="folder", root=str(root), on_error="skip"), split="train")
    reasons = dict((os.path.basename(p), r) for p, r in ds.skipped)
    assert set(reasons) == {"corrupt.wav", "empty.wav", "silent.wav", "short.wav"}
    assert "silent" in reasons["silent.wav"] and "shorter" in reasons["short.wav"]
    assert ds.ids == ["good0.wav", "good1.wav", "good2.wav"]


# ---------------------------------------------------------------------------------------- layouts

def make_ljspeech(root, n=6, seconds=0.6):
    rows = []
    for i in range(n):
        write(root / "wavs" / f"LJ001-{i:04d}.wav", speechish(int(SR * seconds) + 300 * i, seed=i))
        rows.append(f"LJ001-{i:04d}|Text number {i}.|Text number {i}.")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def test_ljspeech_layout_items_splits_and_messages(tmp_path):
    root = make_ljspeech(tmp_path / "LJSpeech-1.1")
    ds = build_audio_dataset(AudioData(root=str(root)))
    assert len(ds) == 6 and ds.ids[0] == "LJ001-0000" and ds.class_names == ["LJSpeech-1.1"] and ds.num_classes == 1
    audio, mel, label = ds[2]
    assert audio.shape[1] % HOP == 0 and mel.shape == (80, audio.shape[1] // HOP) and label == 0
    torch.testing.assert_close(mel, mel_spectrogram(audio, MelConfig()))
    assert len(build_audio_dataset(AudioData(root=str(tmp_path)))) == 6  # the parent of LJSpeech-1.1 works too
    with pytest.raises(AudioDataError, match="data_prep.ljspeech"):
        build_audio_dataset(AudioData(root=str(root)), split="eval")
    (root / "splits").mkdir()
    for name, ids in (("train", [0, 1, 2, 3]), ("dev", [4]), ("eval", [5])):
        (root / "splits" / f"{name}.txt").write_text("".join(f"LJ001-{i:04d}\n" for i in ids))
    assert build_audio_dataset(AudioData(root=str(root)), split="test").ids == ["LJ001-0005"]
    assert len(build_audio_dataset(AudioData(root=str(root)))) == 4
    (root / "wavs" / "LJ001-0002.wav").unlink()
    with pytest.raises(AudioDataError, match="LJ001-0002.wav.*does not exist"):
        build_audio_dataset(AudioData(root=str(root)))
    with pytest.warns(UserWarning):
        assert len(build_audio_dataset(AudioData(root=str(root), on_error="skip"))) == 3
    with pytest.raises(AudioDataError, match="LJSpeech-1.1.tar.bz2") as e:
        build_audio_dataset(AudioData(root=str(tmp_path / "nowhere")))
    assert "metadata.csv" in str(e.value) and "tar xj" in str(e.value)


def test_folder_layout_classes_formats_and_hashed_splits(tmp_path):
    root = tmp_path / "sounds"
    for c in ("birds", "cars"):
        for i in range(12):
            write(root / c / f"{i}.{'flac' if i % 2 else 'wav'}", tone(SR // 4, f=300 + 40 * i))
    (root / "cars" / "notes.txt").write_text("ignored")
    cfg = AudioData(layout="folder", root=str(root), crop_frames=0)
    train = build_audio_dataset(cfg)
    ids = list(train.ids)
    for split, slot in (("dev", 1), ("eval", 0)):
        expect = sorted(f"{c}/{i}.{'flac' if i % 2 else 'wav'}" for c in ("birds", "cars") for i in range(12)
                        if audio_mod.stable_hash(f"{c}/{i}.{'flac' if i % 2 else 'wav'}") % 20 == slot)
        if expect:
            ids += build_audio_dataset(cfg, split).ids
        else:
            with pytest.raises(AudioDataError, match=f"in the {split} split"):
                build_audio_dataset(cfg, split)
    assert len(ids) == len(set(ids)) == 24  # the splits are disjoint and cover the folder
    assert train.class_names == ["birds", "cars"]
    assert all(y == (0 if i.startswith("birds/") else 1) for i, (_, y) in zip(train.ids, train.items))
    write(root / "loose.wav", tone(SR))
    with pytest.raises(AudioDataError, match="mixes 1 loose audio"):
        build_audio_dataset(AudioData(layout="folder", root=str(root)))


def make_speech_commands(root, per_word=3, sr=16000):
    """A tiny Speech Commands tree: the digit words, one other word, lists that mention both."""
    val, test = [], []
    for w in SC09_WORDS + ("yes",):
        for i in range(per_word):
            n = [sr, sr // 2, sr + sr // 5][i % 3]  # 1 s, shorter, longer
            write(root / w / f"spk{i}_nohash_0.wav", tone(n, sr=sr, f=200 + 30 * i), sr=sr)
        val.append(f"{w}/spk1_nohash_0.wav")
        test.append(f"{w}/spk2_nohash_0.wav")
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


def test_sc09_layout_lists_labels_and_one_second_clips(tmp_path):
    root = make_speech_commands(tmp_path / "speech_commands")
    cfg = AudioData(layout="sc09", root=str(root), sample_rate=16000, crop_frames=0)
    train, dev, ev = (build_audio_dataset(cfg, split=s) for s in ("train", "dev", "eval"))
    assert (len(train), len(dev), len(ev)) == (10, 10, 10)
    assert train.class_names == list(SC09_WORDS) and sorted(train.labels) == list(range(10))
    assert all("yes" not in i for i in train.ids + dev.ids + ev.ids)
    assert dev.ids[3] == "three/spk1_nohash_0.wav" and dev.labels[3] == 3
    for ds in (train, dev, ev):
        audio, mel, label = ds[0]
        assert audio.shape == (1, 16000) and mel.shape == (80, 16000 // HOP)
    audio, mel, labels = collate([dev[i] for i in range(4)], 0, torch.Generator(), dev.mel_config)
    assert audio.shape == (4, 1, 16000) and labels.tolist() == [0, 1, 2, 3]
    (root / "testing_list.txt").unlink()
    with pytest.raises(AudioDataError, match="testing_list.txt"):
        build_audio_dataset(cfg)
    with pytest.raises(AudioDataError, match="speech_commands_v0.02.tar.gz") as e:
        build_audio_dataset(AudioData(layout="sc09", root=str(tmp_path / "missing")))
    assert "zero" in str(e.value) and "data_prep.sc09" in str(e.value)


def test_config_errors_name_the_key(tmp_path):
    for kwargs, key in ((dict(layout="mp3s"), "layout"), (dict(mel="world"), "mel"), (dict(on_error="ignore"),
                        "on_error"), (dict(crop_frames=-1), "crop_frames"), (dict(root=""), "root"),
                        (dict(min_seconds=-1), "min_seconds")):
        with pytest.raises(AudioDataError, match=rf"\[data\] (unknown )?{key}"):
            build_audio_dataset(AudioData(**{"root": str(tmp_path), **kwargs}))
    with pytest.raises(AudioDataError, match="split must be one of"):
        build_audio_dataset(AudioData(root=str(tmp_path)), split="holdout")


def test_split_file_and_max_items_restrict_the_items(tmp_path):
    root = make_ljspeech(tmp_path / "lj", n=8, seconds=0.2)
    (tmp_path / "mine.txt").write_text("LJ001-0001\nwavs/LJ001-0003.wav\n")
    ds = build_audio_dataset(AudioData(root=str(root), split=str(tmp_path / "mine.txt")))
    assert ds.ids == ["LJ001-0001", "LJ001-0003"]  # ids or paths relative to root
    assert len(build_audio_dataset(AudioData(root=str(root), max_items=3))) == 3
    with pytest.raises(AudioDataError, match="split file"):
        build_audio_dataset(AudioData(root=str(root), split="absent.txt"))


# ---------------------------------------------------------------------------------------- cache

def test_mel_cache_is_reused_and_invalidated_by_file_or_config_changes(tmp_path, monkeypatch):
    root = make_ljspeech(tmp_path / "lj", n=3)
    cache = tmp_path / "cache"
    ds = build_audio_dataset(AudioData(root=str(root)), cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 3 and not list(cache.glob(".*"))  # no temp files left
    first = [ds[i][1] for i in range(3)]

    def refuse(*a, **k):
        raise AssertionError("mel recomputed although cached")
    monkeypatch.setattr(audio_mod, "mel_spectrogram", refuse)
    again = build_audio_dataset(AudioData(root=str(root)), cache_dir=str(cache))
    for i in range(3):
        torch.testing.assert_close(again[i][1], first[i], atol=0, rtol=0)
    monkeypatch.undo()

    wav = root / "wavs" / "LJ001-0001.wav"
    write(wav, tone(SR, f=880.0))
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))
    changed = build_audio_dataset(AudioData(root=str(root)), cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 4
    audio, mel, _ = changed[1]
    torch.testing.assert_close(mel, mel_spectrogram(audio, MelConfig()))
    assert mel.shape != first[1].shape or not torch.equal(mel, first[1])
    build_audio_dataset(AudioData(root=str(root), mel="hifigan"), cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 7
    assert build_audio_dataset(AudioData(root=str(root), cache_dir=str(tmp_path / "mine")),
                               cache_dir=cache).cache_dir == tmp_path / "mine"  # the config's own dir wins
    bad = changed._cache_file(wav)
    bad.write_bytes(b"\x93NUMPY garbage")
    torch.testing.assert_close(changed[1][1], mel)  # an unreadable entry is recomputed and rewritten
    assert np.load(bad).shape == mel.shape


# ---------------------------------------------------------------------------------------- crops

def test_random_crops_are_aligned_reproducible_and_pad_short_clips(tmp_path):
    cfg = MelConfig()
    audio = torch.from_numpy(speechish(HOP * 40))[None]
    mel = mel_spectrogram(audio, cfg)
    starts = set()
    for seed in range(6):
        a, m = random_crop(audio, mel, 8, torch.Generator().manual_seed(seed), cfg)
        a2, m2 = random_crop(audio, mel, 8, torch.Generator().manual_seed(seed), cfg)
        assert torch.equal(a, a2) and torch.equal(m, m2)
        assert a.shape == (1, 8 * HOP) and m.shape == (80, 8)
        j = next(j for j in range(33) if torch.equal(mel[:, j:j + 8], m))
        assert torch.equal(a, audio[:, j * HOP:(j + 8) * HOP])
        starts.add(j)
    assert len(starts) > 2

    short = torch.from_numpy(speechish(HOP * 5 + 100))[None]
    a, m = random_crop(short, mel_spectrogram(short, cfg), 8, torch.Generator().manual_seed(0), cfg)
    assert a.shape == (1, 8 * HOP) and m.shape == (80, 8)
    assert torch.equal(a[:, :5 * HOP], short[:, :5 * HOP]) and not a[:, 5 * HOP:].any()
    assert torch.equal(m[:, :5], mel_spectrogram(short, cfg)) and torch.equal(m[:, 5:], torch.zeros(80, 3))

    ds = build_audio_dataset(AudioData(root=str(make_ljspeech(tmp_path / "lj", n=3)), crop_frames=20))
    items = [ds[i] for i in range(3)]
    b1 = ds.collate(items, torch.Generator().manual_seed(7))
    b2 = collate(items, 20, torch.Generator().manual_seed(7), ds.mel_config)
    assert b1[0].shape == (3, 1, 20 * HOP) and b1[1].shape == (3, 80, 20) and b1[2].dtype == torch.long
    assert all(torch.equal(x, y) for x, y in zip(b1, b2))
    with pytest.raises(AudioDataError, match="crop_frames"):
        collate(items, 0, torch.Generator(), ds.mel_config)
