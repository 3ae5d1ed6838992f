"""Video data: PyAV reading/writing (MP4, GIF, AVI, WebM), striding and fps resampling, the resize rule,
folder / UCF-101 / npy layouts, bad files (raise and skip), the decode cache, clip starts, grids."""
import os
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from helpers.fake_data import UCF_CLASSES, make_fake_ucf101, write_avi
from multidiff.data import video, video_read
from multidiff.data.image import pil_to_tensor
from multidiff.data.video import (VideoData, VideoDataError, build_video_dataset, read_video, save_video_grid,
                                  write_gif, write_video)


def levels_clip(t=12, h=20, w=28, c=1, step=18):
    """Frame i is flat gray level 20 + step*i (plus a small ramp, so codecs see texture): frame i is
    recognisable after decoding by its mean."""
    ramp = torch.linspace(-0.05, 0.05, w).view(1, 1, 1, w)
    lv = (20 + step * torch.arange(t)).float().view(1, t, 1, 1) / 127.5 - 1
    return (lv + ramp).expand(c, t, h, w).clamp(-1, 1).contiguous()


def frame_ids(x, step=18):
    """Which levels_clip frame each decoded frame [C, T, H, W] is."""
    return [round(((m + 1) * 127.5 - 20) / step) for m in x.mean(dim=(0, 2, 3)).tolist()]


def pattern_clip(c=3, t=8, h=33, w=47, seed=0):
    """A smooth moving pattern: every frame differs, nothing a codec mangles."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    phase = torch.rand(c, 1, 1, 1, generator=g) * 6
    tt = torch.arange(t).view(1, t, 1, 1) * 0.4
    return (0.8 * torch.sin(2 * xx + yy + tt + phase)).float()


def write_zero_frame_avi(path):
    """An AVI whose video stream has no frames (only audio packets)."""
    with av.open(str(path), "w") as out:
        v = out.add_stream("mpeg4", rate=8)
        v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
        a = out.add_stream("pcm_s16le", rate=16000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.int16), format="s16", layout="mono")
        fr.sample_rate = 16000
        for i in range(2):
            fr.pts = i * 1024
            out.mux(a.encode(fr))
        out.mux(a.encode())


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = video._decode

    def counting(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(video, "_decode", counting)
    return calls


# ---------------------------------------------------------------------------------------- read / write

def _encodes(name):
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


H264_CODEC = "h264" if _encodes("libx264") else "mpeg4"  # without libx264, .mp4 falls back to MPEG-4 part 2
EXTENSIONS = [".mp4", ".gif", ".avi", ".mkv"] + ([".webm"] if _encodes("libvpx-vp9") else [])


def test_encoders_here():
    assert _encodes("mpeg4") and _encodes("gif")  # what every PyAV build has
    assert video.H264 == ("libx264" if H264_CODEC == "h264" else "mpeg4")


@pytest.mark.parametrize("ext", EXTENSIONS)
@pytest.mark.parametrize("channels", [1, 3])
def test_write_read_round_trip(tmp_path, ext, channels):
    clip = pattern_clip(channels, t=8, h=33, w=47)
    path = write_video(clip, tmp_path / "sub" / f"clip{ext}", fps=8)
    x = read_video(path, None, channels)
    # GIF keeps any size; H.264 / MPEG-4 / VP9 need even sizes: one edge column/row is added
    assert x.shape == ((channels, 8, 33, 47) if ext == ".gif" else (channels, 8, 34, 48))
    assert x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    err = (x[..., :33, :47] - clip).abs().mean().item()
    assert err < (0.005 if ext == ".gif" and channels == 1 else 0.04), err  # gray GIF: exact up to uint8
    if ext != ".gif":
        assert (x[..., 33, :47] - x[..., 32, :47]).abs().mean() < 0.05  # padding repeats the edge
    with av.open(str(path)) as c:
        codec = c.streams.video[0].codec_context.name
    assert codec == {".mp4": H264_CODEC, ".mkv": H264_CODEC, ".avi": "mpeg4", ".webm": "vp9", ".gif": "gif"}[ext]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left behind


def test_avi_written_by_pyav(tmp_path):
    frames = ((levels_clip(t=9, c=3) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()
    write_avi(tmp_path / "a.avi", frames)
    x = read_video(tmp_path / "a.avi", None, 3)
    assert x.shape == (3, 9, 20, 28) and frame_ids(x) == list(range(9))
    assert frame_ids(read_video(tmp_path / "a.avi", 16, 1, frame_stride=4)) == [0, 4, 8]


def test_frame_stride_fps_and_max_frames(tmp_path):
    gif = write_gif(levels_clip(t=12), tmp_path / "l.gif", fps=8)
    assert frame_ids(read_video(gif, None, 1)) == list(range(12))
    assert frame_ids(read_video(gif, None, 1, frame_stride=3)) == [0, 3, 6, 9]
    assert frame_ids(read_video(gif, None, 1, fps=4)) == [0, 2, 4, 6, 8, 10]      # fewer frames by time
    assert frame_ids(read_video(gif, None, 1, max_frames=5)) == [0, 1, 2, 3, 4]
    assert frame_ids(read_video(gif, None, 1, fps=4, max_frames=2)) == [0, 2]
    # GIF delays are in 1/100 s: 12.5 alternates 12 and 13 so a long clip keeps 8 fps on average
    long = write_gif(levels_clip(t=14, step=16), tmp_path / "long.gif", fps=8)
    assert frame_ids(read_video(long, None, 1, fps=8), step=16) == list(range(14))
    mp4 = write_video(levels_clip(t=24, step=9), tmp_path / "l.mp4", fps=24)
    assert frame_ids(read_video(mp4, None, 1, fps=8), step=9) == list(range(0, 24, 3))
    assert frame_ids(read_video(mp4, None, 1, frame_stride=3), step=9) == list(range(0, 24, 3))
    assert frame_ids(read_video(mp4, None, 1, fps=48), step=9) == [i // 2 for i in range(48)]  # each shown twice
    with pytest.raises(ValueError, match="not both"):
        read_video(mp4, None, 1, frame_stride=2, fps=4)


@pytest.mark.parametrize("channels", [1, 3])
def test_resize_rule_matches_images_on_odd_sizes(tmp_path, channels):
    """33 x 47 frames, resized to 16 x 16 and to a non-square-dividing 20: the image module's rule
    (largest centered square, bicubic), frame by frame."""
    clip = pattern_clip(3, t=4, h=47, w=33, seed=3)
    gif = write_gif(clip, tmp_path / "odd.gif")
    native = read_video(gif, None, 3)
    assert native.shape == (3, 4, 47, 33)
    for size in (16, 20):
        x = read_video(gif, size, channels)
        assert x.shape == (channels, 4, size, size)
        for t in range(4):
            frame = ((native[:, t] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            want = pil_to_tensor(Image.fromarray(frame), size, channels)
            assert torch.allclose(x[:, t], want, atol=1e-6)


def test_display_rotation_is_applied():
    """Phone videos: a frame with rotation = 90 (counterclockwise, ffmpeg's display matrix) is turned."""
    class Frame:  # PyAV frames' rotation is read-only, and this PyAV cannot write a display matrix
        format = type("F", (), {"name": "yuv420p"})
        rotation = 90

        def to_ndarray(self, format):
            a = np.zeros((2, 4, 3), np.uint8)
            a[0, :] = 255  # top row white
            return a

    im = np.asarray(video_read._frame_image(Frame()))
    assert im.shape == (4, 2, 3) and (im[:, 0] == 255).all() and (im[:, 1] == 0).all()  # top -> left


def test_read_video_errors_name_the_file(tmp_path):
    with pytest.raises(VideoDataError, match="not found"):
        read_video(tmp_path / "none.mp4", 16)
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDataError, match=r"garbage\.mp4.*not a readable video"):
        read_video(bad, 16)
    write_zero_frame_avi(tmp_path / "empty.avi")
    with pytest.raises(VideoDataError, match=r"empty\.avi.*no video frames"):
        read_video(tmp_path / "empty.avi", 16)
    with pytest.raises(ValueError, match="clip"):
        write_video(torch.zeros(2, 3, 8, 8), tmp_path / "x.mp4")
    with pytest.raises(ValueError, match=".mp4"):
        write_video(torch.zeros(1, 3, 8, 8), tmp_path / "x.flv")


# ---------------------------------------------------------------------------------------- layouts

def test_folder_layout_classes_and_splits(tmp_path):
    root = tmp_path / "clips"
    for split, n in (("train", 3), ("test", 1)):
        for k, cls in enumerate(("cats", "dogs")):
            for i in range(n):
                ext = (".mp4", ".gif", ".avi")[i % 3]
                write_video(pattern_clip(3, t=6, h=24, w=30, seed=10 * k + i), root / split / cls / f"v{i}{ext}")
    (root / "train" / "cats" / "notes.txt").write_text("not a video")
    for split, n in (("train", 6), ("test", 2)):
        ds = build_video_dataset(VideoData(root=str(root), frames=4, size=16, channels=3, start="first"), split,
                                 cache_dir=tmp_path / "cache")
        assert len(ds) == n and ds.class_names == ["cats", "dogs"] and ds.num_classes == 2
        assert ds.labels == [0] * (n // 2) + [1] * (n // 2)
        x, y = ds[n - 1]
        assert x.shape == (3, 4, 16, 16) and x.dtype == torch.float32 and y == 1
        assert -1 <= x.min() and x.max() <= 1 and ds.skipped == []

    # no train/test folders: ~10% of the files by path hash are "test"; loose files are one class
    flat = tmp_path / "flat"
    for i in range(12):
        write_video(pattern_clip(1, t=4, h=16, w=16, seed=i), flat / f"c{i:02d}.mp4")
    cfg = VideoData(root=str(flat), frames=4, size=16, cache=False)
    train, test = build_video_dataset(cfg, "train"), build_video_dataset(cfg, "test")
    assert len(train) + len(test) == 12 and not set(train.paths) & set(test.paths)
    assert train.class_names == ["flat"] and set(train.labels) == {0}
    with pytest.raises(VideoDataError, match="no videos in"):
        build_video_dataset(VideoData(root=str(tmp_path / "cache")), "train")


def _write_splits(root, files, k=1):
    (root / "splits").mkdir(exist_ok=True)
    (root / "splits" / "classes.txt").write_text("".join(c + "\n" for c in UCF_CLASSES))
    for split in ("train", "test"):
        rows = [(rel, y) for rel, y in files.items() if (f"_g{k:02d}_" in rel) == (split == "test")]
        (root / "splits" / f"{split}{k}.txt").write_text("".join(f"UCF-101/{rel}\t{y}\n" for rel, y in rows))


def test_ucf101_layout(tmp_path):
    root = tmp_path / "ucf"
    files = make_fake_ucf101(root)
    cfg = VideoData(layout="ucf101", root=str(root), frames=4, frame_stride=2, size=16, channels=3, start="first")
    with pytest.raises(VideoDataError, match=r"python -m data_prep\.ucf101 --root"):
        build_video_dataset(cfg, "train", cache_dir=tmp_path / "cache")
    _write_splits(root, files, k=2)
    test = build_video_dataset(VideoData(**{**cfg.__dict__, "ucf_split": 2}), "test", cache_dir=tmp_path / "cache")
    train = build_video_dataset(VideoData(**{**cfg.__dict__, "ucf_split": 2}), "train", cache_dir=tmp_path / "cache")
    assert len(test) == 3 and len(train) == 6 and test.class_names == list(UCF_CLASSES)
    assert test.labels == [0, 1, 2] and all("_g02_" in p for p in test.paths)
    assert test.lengths == [5, 5, 5]  # 10 frames, every 2nd
    x, y = train[5]
    assert x.shape == (3, 4, 16, 16) and y == 2
    with pytest.raises(VideoDataError, match="UCF101.rar"):
        build_video_dataset(VideoData(layout="ucf101", root=str(tmp_path / "nothing")), "train")


def test_npy_layout(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(10, 20, 24, 24), dtype=np.uint8)  # (T, N, H, W) like mnist_test_seq.npy
    np.save(tmp_path / "seq.npy", arr)
    cfg = VideoData(layout="npy", root=str(tmp_path / "seq.npy"), frames=5, size=24, start="first")
    train, test = build_video_dataset(cfg, "train"), build_video_dataset(cfg, "test")
    assert len(train) == 18 and len(test) == 2  # one file: the last 10% of sequences are "test"
    x, y = test[1]
    assert x.shape == (1, 5, 24, 24) and y == 0 and test.class_names == ["seq"]
    assert torch.equal(x[0], torch.from_numpy(arr[:5, 19]).float() / 127.5 - 1)
    rgb = build_video_dataset(VideoData(**{**cfg.__dict__, "channels": 3, "size": 12, "frame_stride": 2}), "train")
    x, _ = rgb[0]
    assert x.shape == (3, 5, 12, 12) and torch.equal(x[0], x[2])
    folder = tmp_path / "pair"
    folder.mkdir()
    np.save(folder / "train.npy", arr[:, :15])
    np.save(folder / "test.npy", arr[:, 15:])
    assert len(build_video_dataset(VideoData(**{**cfg.__dict__, "root": str(folder)}), "test")) == 5
    with pytest.raises(VideoDataError, match="fewer than data.frames = 11"):
        build_video_dataset(VideoData(**{**cfg.__dict__, "frames": 11}), "train")
    np.save(tmp_path / "float.npy", arr.astype(np.float32))
    with pytest.raises(VideoDataError, match=r"float\.npy.*uint8"):
        build_video_dataset(VideoData(**{**cfg.__dict__, "root": str(tmp_path / "float.npy")}), "train")
    with pytest.raises(VideoDataError, match="no timestamps"):
        build_video_dataset(VideoData(**{**cfg.__dict__, "fps": 4.0}), "train")


# ---------------------------------------------------------------------------------------- bad files

def _bad_folder(tmp_path):
    root = tmp_path / "bad" / "train" / "x"
    write_video(pattern_clip(1, t=8, h=16, w=16), root / "a_good.mp4")
    (root / "b_garbage.mp4").write_bytes(b"\x00\x01definitely not a video" * 100)
    write_zero_frame_avi(root / "c_empty.avi")
    write_video(pattern_clip(1, t=3, h=16, w=16), root / "d_short.mp4")
    (tmp_path / "bad" / "test" / "x").mkdir(parents=True)
    return tmp_path / "bad"


def test_bad_videos_raise_or_skip(tmp_path):
    root = _bad_folder(tmp_path)
    cfg = VideoData(root=str(root), frames=4, size=16, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(VideoDataError, match=r"b_garbage\.mp4.*not a readable video.*on_error"):
        build_video_dataset(cfg)
    (root / "train" / "x" / "b_garbage.mp4").rename(tmp_path / "garbage.mp4")
    with pytest.raises(VideoDataError, match=r"c_empty\.avi.*no video frames"):
        build_video_dataset(cfg)
    (root / "train" / "x" / "c_empty.avi").rename(tmp_path / "empty.avi")
    with pytest.raises(VideoDataError, match=r"d_short\.mp4.*has 3 frames, fewer than data.frames = 4.*pad_short"):
        build_video_dataset(cfg)
    (tmp_path / "garbage.mp4").rename(root / "train" / "x" / "b_garbage.mp4")
    (tmp_path / "empty.avi").rename(root / "train" / "x" / "c_empty.avi")

    with pytest.warns(UserWarning, match=r"skipped 3 of 4 videos.*b_garbage\.mp4"):
        ds = build_video_dataset(VideoData(**{**cfg.__dict__, "on_error": "skip"}))
    assert len(ds) == 1 and ds.paths[0].endswith("a_good.mp4")
    assert [Path(p).name for p, _ in ds.skipped] == ["b_garbage.mp4", "c_empty.avi", "d_short.mp4"]
    assert "fewer than data.frames" in ds.skipped[2][1]

    with pytest.warns(UserWarning, match="skipped 2"):  # pad_short: the short clip holds its last frame
        ds = build_video_dataset(VideoData(**{**cfg.__dict__, "on_error": "skip", "pad_short": True}))
    short = ds.paths.index(str(root / "train" / "x" / "d_short.mp4"))
    x, _ = ds[short]
    assert x.shape == (1, 4, 16, 16) and torch.equal(x[:, 3], x[:, 2]) and not torch.equal(x[:, 1], x[:, 2])
    assert ds.num_starts(short) == 1


def test_config_errors_name_the_key():
    for kw, msg in (({"layout": "mp4"}, "unknown layout"), ({"fps": 8.0, "frame_stride": 2}, "not both"),
                    ({"channels": 2}, "channels"), ({"start": "middle"}, "start must be"),
                    ({"frames": 0}, "frames must be"), ({"ucf_split": 4}, "ucf_split"), ({}, "root is empty"),
                    ({"on_error": "ignore"}, "on_error")):
        with pytest.raises(VideoDataError, match=msg):
            build_video_dataset(VideoData(**{"root": "x", **kw}) if kw else VideoData())


# ---------------------------------------------------------------------------------------- cache

def test_cache_reused_and_invalidated(tmp_path, count_decodes):
    root, cache = tmp_path / "v", tmp_path / "cache"
    for i in range(3):
        write_video(pattern_clip(1, t=6, h=20, w=20, seed=i), root / "train" / f"v{i}.mp4")
    (root / "test").mkdir()
    cfg = VideoData(root=str(root), frames=4, size=16, start="first")
    split = "train"
    first = build_video_dataset(cfg, split, cache_dir=cache)
    n = len(first)
    assert n == 3 and len(count_decodes) == n and len(list(cache.glob("*.npy"))) == n
    clips = [first[i][0] for i in range(n)]
    assert len(count_decodes) == n  # items come from the cache, not from decoding

    count_decodes.clear()
    again = build_video_dataset(cfg, split, cache_dir=cache)
    assert count_decodes == [] and all(torch.equal(again[i][0], clips[i]) for i in range(n))

    edited = Path(again.paths[0])  # editing a video invalidates its entry (byte size / mtime stamp)
    write_video(-pattern_clip(1, t=7, h=20, w=20), edited)
    st = edited.stat()
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = build_video_dataset(cfg, split, cache_dir=cache)
    assert count_decodes == [str(edited)] and third.lengths[0] == 7
    assert len(list(cache.glob("*.npy"))) == n  # the stale entry is gone
    assert not torch.equal(third[0][0], clips[0])

    count_decodes.clear()  # other decode settings are other entries
    build_video_dataset(VideoData(**{**cfg.__dict__, "size": 8}), split, cache_dir=cache)
    assert len(count_decodes) == n and len(list(cache.glob("*.npy"))) == 2 * n

    count_decodes.clear()  # cache = false: decoded at build (to check), then per item up to the clip's end
    nocache = build_video_dataset(VideoData(**{**cfg.__dict__, "cache": False}), split, cache_dir=tmp_path / "c2")
    assert len(count_decodes) == n and not (tmp_path / "c2").exists()
    assert torch.equal(nocache[1 % n][0], third[1 % n][0]) and len(count_decodes) == n + 1


# ---------------------------------------------------------------------------------------- clip starts

def test_clip_starts(tmp_path):
    write_video(levels_clip(t=12, h=16, w=16, step=18), tmp_path / "v" / "train" / "a.mp4")
    write_video(levels_clip(t=12, h=16, w=16, step=18), tmp_path / "v" / "train" / "b.gif")
    (tmp_path / "v" / "test").mkdir()
    base = dict(root=str(tmp_path / "v"), frames=4, size=16, cache_dir=str(tmp_path / "cache"))
    split = "train"
    ds = build_video_dataset(VideoData(**base, start="random"), split)
    i = 0
    assert ds.num_starts(i) == 9 and ds.lengths[ds.video_of[i]] == 12
    # ds[i] draws nothing: the middle clip
    assert ds.start(i) == 4 and frame_ids(ds[i][0]) == [4, 5, 6, 7] and torch.equal(ds[i][0], ds[i][0])
    starts = [ds.start(i, torch.Generator().manual_seed(s)) for s in range(20)]
    assert starts == [ds.start(i, torch.Generator().manual_seed(s)) for s in range(20)]  # seeded: repeatable
    assert len(set(starts)) >= 5 and all(0 <= s <= 8 for s in starts)
    x, y = ds.clip(i, torch.Generator().manual_seed(7))
    s = ds.start(i, torch.Generator().manual_seed(7))
    assert frame_ids(x) == list(range(s, s + 4)) and torch.equal(ds[(i, 7)][0], x)
    # a DataLoader batch sampler can hand out (index, seed) pairs: deterministic random clips in workers
    loader = torch.utils.data.DataLoader(ds, batch_sampler=[[(i, 7), (i, 8)]])
    batch, labels = next(iter(loader))
    assert batch.shape == (2, 1, 4, 16, 16) and torch.equal(batch[0], x)

    uni = build_video_dataset(VideoData(**base, start="uniform", clips_per_video=3), split)
    assert len(uni) == 3 * len(ds) and [uni.start(j) for j in range(3)] == [0, 4, 8]
    assert uni.start(0, torch.Generator().manual_seed(1)) == 0  # only "random" draws
    assert [frame_ids(uni[j][0]) for j in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    first = build_video_dataset(VideoData(**base, start="first"), split)
    assert first.start(0) == 0 and first.start(0, torch.Generator().manual_seed(3)) == 0
    with pytest.raises(IndexError):
        first[len(first)]


# ---------------------------------------------------------------------------------------- grids

@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_save_video_grid(tmp_path, ext):
    clips = torch.stack([pattern_clip(3, t=5, h=10, w=12, seed=i) for i in range(5)])
    path = save_video_grid(clips, tmp_path / f"grid{ext}", fps=4)
    x = read_video(path, None, 3)
    assert x.shape == (3, 5, 26, 44)  # 3 per row, 2 rows, 2 px padding: (2+10)*2+2 x (2+12)*3+2
    tile = x[:, :, 14:24, 16:28]      # clip 4: row 1, column 1
    assert (tile - clips[4]).abs().mean() < (0.12 if ext == ".mp4" else 0.06)  # 4:2:0 chroma on 12 px tiles
    assert (x[:, :, :2] + 1).abs().mean() < 0.05  # padding is black
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        save_video_grid(torch.zeros(2, 2, 3, 8, 8), tmp_path / "bad.mp4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_video_grid(clips[0], tmp_path / f"one{ext}")  # a single clip [C, T, H, W] works too
