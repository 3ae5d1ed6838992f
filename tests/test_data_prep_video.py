"""Video data prep: the moving-digits generator (real sklearn digits, bouncing, MP4 + npy layouts,
deterministic, idempotent) and the UCF-101 checker on a miniature of the real layout."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # data_prep/ lives beside multidiff/

from data_prep import moving_digits, ucf101  # noqa: E402
from multidiff.data.image import ImageData, build_image_dataset  # noqa: E402
from multidiff.data.video import VideoData, VideoDataError, build_video_dataset, read_video  # noqa: E402
from helpers.fake_data import UCF_CLASSES, make_fake_ucf101  # noqa: E402

SMALL = ["--n", "10", "--n-test", "4", "--frames", "8", "--size", "32"]


@pytest.fixture(scope="module")
def one_digit(tmp_path_factory):
    out = tmp_path_factory.mktemp("md") / "one"
    assert moving_digits.main(["--out", str(out), *SMALL, "--digits", "1", "--npy"]) == 0
    return out


def test_moving_digits_read_back_as_folder_layout(one_digit, tmp_path):
    manifest = json.loads((one_digit / "manifest.json").read_text())
    assert manifest["complete"] and manifest["options"]["frames"] == 8 and manifest["options"]["size"] == 32
    cfg = VideoData(root=str(one_digit), frames=8, size=32, start="first")
    train = build_video_dataset(cfg, "train", cache_dir=tmp_path / "cache")
    test = build_video_dataset(cfg, "test", cache_dir=tmp_path / "cache")
    assert len(train) == 10 and len(test) == 4
    assert train.class_names == [str(d) for d in range(10)]  # --digits 1: clip i shows digit i % 10
    want = {c["file"]: c["labels"][0] for c in manifest["clips"]["train"]}
    assert {str(Path(p).relative_to(one_digit)): y for p, y in zip(train.paths, train.labels)} == want
    x, y = train[3]
    assert x.shape == (1, 8, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    # the MP4s decode to the uncompressed clips of train.npy (H.264 at crf 12: small differences)
    npy = np.load(one_digit / "train.npy")
    i = int(Path(train.paths[3]).stem.split("_")[1])
    assert (x[0] - (torch.from_numpy(npy[:, i]).float() / 127.5 - 1)).abs().mean() < 0.01


def test_moving_digits_shapes_keep_and_move(one_digit):
    npy = np.load(one_digit / "train.npy")
    assert npy.dtype == np.uint8 and npy.shape == (8, 10, 32, 32)  # (T, N, H, W) like mnist_test_seq.npy
    for n in range(10):
        clip = npy[:, n].astype(np.int64)
        mass = clip.reshape(8, -1).sum(1)
        assert mass.min() == mass.max() > 0  # one digit, never clipped by a wall: the same ink every frame
        crops = []
        for f in clip:  # the same shape, translated
            ys, xs = np.nonzero(f)
            crops.append(f[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
        assert all(np.array_equal(c, crops[0]) for c in crops)
        assert (np.abs(np.diff(clip, axis=0)).reshape(7, -1).sum(1) > 0).sum() >= 5  # it moves
        # after MP4 compression: ink per frame nearly constant
        files = sorted(one_digit.glob(f"train/*/clip_{n:05d}.mp4"))
        x = (read_video(files[0], None, 1)[0] + 1) / 2
        m = x.reshape(8, -1).sum(1)
        assert (m.max() - m.min()) / m.mean() < 0.03


def test_bounces_stay_inside():
    rng = np.random.default_rng(0)
    paths = moving_digits.bounce_paths(rng, 2, 400, room=18, speed=(1.0, 2.0))
    assert paths.min() >= 0 and paths.max() <= 18
    step = np.diff(paths, axis=0)
    assert (np.abs(step) <= 3).all()
    flips = (np.sign(step[1:]) * np.sign(step[:-1]) < 0).sum()
    assert flips >= 10  # it does hit the walls and turn back


def test_moving_digits_test_clips_use_test_digits(one_digit):
    manifest = json.loads((one_digit / "manifest.json").read_text())
    test_idx = set(build_image_dataset(ImageData(size=8), "test").source_index)
    for split, want in (("train", False), ("test", True)):
        used = {j for c in manifest["clips"][split] for j in c["source_index"]}
        assert used and all((j in test_idx) == want for j in used)


def test_moving_digits_idempotent_resume_and_refusal(tmp_path, capsys):
    out = tmp_path / "two"
    args = ["--out", str(out), "--n", "6", "--n-test", "2", "--frames", "6", "--size", "24"]
    assert moving_digits.main(args) == 0
    files = sorted(out.rglob("*.mp4"))
    assert len(files) == 8 and all(f.parent.name in ("train", "test") for f in files)  # 2 digits: unlabelled
    stamps = {f: f.stat().st_mtime_ns for f in files}
    capsys.readouterr()
    assert moving_digits.main(args) == 0
    assert "0 clip(s) written, 8 already present" in capsys.readouterr().out
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    files[0].unlink()  # as if killed before this clip was renamed into place
    assert moving_digits.main(args) == 0
    assert "1 clip(s) written, 7 already present" in capsys.readouterr().out
    ds = build_video_dataset(VideoData(root=str(out), frames=6, size=24, cache=False), "train")
    assert len(ds) == 6 and ds.class_names == ["two"] and ds[0][0].shape == (1, 6, 24, 24)
    assert moving_digits.main(args[:-1] + ["32"]) == 1
    assert "other options (size: 24 -> 32" in capsys.readouterr().err


def test_moving_digits_deterministic_and_npy_layout(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    base = ["--frames", "5", "--size", "24", "--npy", "--seed", "3"]
    assert moving_digits.main(["--out", str(a), "--n", "4", "--n-test", "2", *base]) == 0
    assert moving_digits.main(["--out", str(b), "--n", "7", "--n-test", "2", *base]) == 0
    A, B = np.load(a / "train.npy"), np.load(b / "train.npy")
    assert A.shape == (5, 4, 24, 24) and np.array_equal(A, B[:, :4])  # a larger --n only adds clips
    assert np.array_equal(np.load(a / "test.npy"), np.load(b / "test.npy"))
    ds = build_video_dataset(VideoData(layout="npy", root=str(b), frames=4, frame_stride=1, size=16), "train")
    assert len(ds) == 7 and ds[6][0].shape == (1, 4, 16, 16) and ds.class_names == ["b"]


# ---------------------------------------------------------------------------------------- UCF-101

def test_ucf101_prep_writes_the_lists_the_loader_reads(tmp_path, capsys):
    root = tmp_path / "ucf"
    files = make_fake_ucf101(root)
    assert ucf101.main(["--root", str(root), "--probe", "all"]) == 0
    assert "3 classes, 9/9 listed videos present" in capsys.readouterr().out
    assert (root / "splits" / "classes.txt").read_text().split() == list(UCF_CLASSES)
    for k in (1, 2, 3):
        test = (root / "splits" / f"test{k}.txt").read_text().splitlines()
        assert sorted(test) == sorted(f"UCF-101/{rel}\t{y}" for rel, y in files.items() if f"_g0{k}_" in rel)
        ds = build_video_dataset(VideoData(layout="ucf101", root=str(root), ucf_split=k, frames=4, size=16,
                                           cache=False), "train")
        assert len(ds) == 6 and ds.labels == [0, 0, 1, 1, 2, 2] and ds.num_classes == 3
    assert ds[5][0].shape == (1, 4, 16, 16)
    assert ucf101.main(["--root", str(root)]) == 0
    assert "(up to date)" in capsys.readouterr().out

    bad = root / "UCF-101" / "Basketball" / "v_Basketball_g01_c01.avi"  # corrupt: probed, reported, left out
    bad.write_bytes(b"RIFF" + bytes(3000))
    assert ucf101.main(["--root", str(root), "--probe", "all"]) == 0
    assert "1 corrupt" in capsys.readouterr().out
    report = json.loads((root / "splits" / "report.json").read_text())
    assert list(report["corrupt"]) == ["Basketball/v_Basketball_g01_c01.avi"]
    assert "v_Basketball_g01_c01" not in (root / "splits" / "test1.txt").read_text()

    bad.unlink()  # missing: an error naming it, unless --allow-missing
    assert ucf101.main(["--root", str(root), "--probe", "0"]) == 1
    err = capsys.readouterr().err
    assert "1 of the 9 listed videos are missing" in err and "v_Basketball_g01_c01.avi" in err
    assert ucf101.main(["--root", str(root), "--probe", "0", "--allow-missing"]) == 0
    assert len((root / "splits" / "test1.txt").read_text().splitlines()) == 2


def test_ucf101_prep_missing_data_says_where_to_get_it(tmp_path, capsys):
    assert ucf101.main(["--root", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert "https://www.crcv.ucf.edu/data/UCF101/UCF101.rar" in err
    assert "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip" in err
    assert "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi" in err and "classInd.txt" in err
    root = tmp_path / "ucf"
    make_fake_ucf101(root)
    (root / "ucfTrainTestlist" / "testlist02.txt").unlink()
    assert ucf101.main(["--root", str(root)]) == 1
    assert "testlist02.txt' is missing" in capsys.readouterr().err
    with pytest.raises(VideoDataError, match="UCF101.rar"):
        build_video_dataset(VideoData(layout="ucf101", root=str(tmp_path / "none")), "train")
