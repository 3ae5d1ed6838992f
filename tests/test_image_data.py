"""Image data: scikit-learn digits, folders of real image files, CIFAR-10 in its real pickle layout."""
import hashlib
import io
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers.fake_data import Py2Pickler, write_fake_cifar10
from multidiff.data.image import (ImageData, ImageDataError, build_image_dataset, load_image, random_hflip,
                                  save_image_grid)


# ---------------------------------------------------------------------------------------- digits

@pytest.fixture(scope="module")
def digits():
    return {split: build_image_dataset(ImageData(), split) for split in ("train", "test")}


def test_digits_shapes_range_classes(digits):
    ds = digits["train"]
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    xs = torch.stack([ds[i][0] for i in range(0, len(ds), 50)])
    assert xs.min() == -1 and xs.max() == 1  # black background, white ink at full strength
    assert ds.num_classes == 10 and ds.class_names == [str(c) for c in range(10)]
    assert sorted(set(ds.labels)) == list(range(10))
    assert ds.skipped == []


def test_digits_split_fixed_stratified_disjoint(digits):
    from sklearn.datasets import load_digits

    train, test = digits["train"], digits["test"]
    assert len(train) + len(test) == 1797
    assert set(train.source_index).isdisjoint(test.source_index)
    assert 0.19 < len(test) / 1797 < 0.21
    target = load_digits().target
    for c in range(10):  # stratified: about a fifth of every class
        n_test, n_all = sum(y == c for y in test.labels), int((target == c).sum())
        assert n_test == n_all // 5
    assert [target[i] for i in test.source_index] == test.labels


def test_digits_deterministic(digits):
    again = build_image_dataset(ImageData(), "train")
    assert again.source_index == digits["train"].source_index
    for i in (0, 7, 1000):
        assert torch.equal(again[i][0], digits["train"][i][0])
        assert torch.equal(digits["train"][i][0], digits["train"][i][0])


def test_digits_upsampling_keeps_the_digit(digits):
    from sklearn.datasets import load_digits

    d = load_digits()
    ds = digits["test"]
    corr = []
    for i in range(0, len(ds), 7):
        x = (ds[i][0] + 1) / 2
        # undo the 1-pixel margin: back to 10x10, keep the inner 8x8
        small = F.interpolate(x[None], size=(10, 10), mode="area")[0, 0, 1:-1, 1:-1]
        corr.append(np.corrcoef(small.flatten().numpy(), d.images[ds.source_index[i]].flatten())[0, 1])
    assert min(corr) > 0.9 and np.mean(corr) > 0.96
    # and they are mostly background, like handwriting on paper
    x = torch.stack([ds[i][0] for i in range(100)])
    assert 0.5 < (x < -0.9).float().mean() < 0.85


def test_digits_rgb_size_max_items():
    ds = build_image_dataset(ImageData(size=20, channels=3, max_items=30), "train")
    assert len(ds) == 30
    x, _ = ds[3]
    assert x.shape == (3, 20, 20)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert ds[-1][1] == ds[29][1]
    with pytest.raises(IndexError):
        ds[30]


def test_config_errors():
    for cfg, match in [(ImageData(source="mnist"), "unknown source 'mnist'; choose one of: digits, folder, cifar10"),
                       (ImageData(channels=4), "channels must be 1"),
                       (ImageData(size=0), "size must be a positive integer"),
                       (ImageData(on_error="ignore"), "on_error must be one of: raise, skip"),
                       (ImageData(max_items=-1), "max_items")]:
        with pytest.raises(ImageDataError, match=match):
            build_image_dataset(cfg)
    with pytest.raises(ImageDataError, match="split must be 'train' or 'test'"):
        build_image_dataset(ImageData(), "val")


# ---------------------------------------------------------------------------------------- folder

RED, GREEN = (255, 0, 0), (0, 255, 0)


def write(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def put(root: Path, rel: str, img: Image.Image, **kw) -> Path:
    """Write root/rel, renamed (a suffix on the stem) until the documented split rule (sha1 of the
    relative path, first 4 bytes big-endian, mod 10 == 0 -> test) puts it in "train"."""
    for k in range(100):
        cand = Path(rel).with_stem(Path(rel).stem + (f"_{k}" if k else ""))
        if int.from_bytes(hashlib.sha1(cand.as_posix().encode()).digest()[:4], "big") % 10:
            return write(root / cand, img, **kw)


def solid(color, size=(40, 30), mode="RGB"):
    return Image.new(mode, size, color)


def folder(root, **kw):
    return build_image_dataset(ImageData(source="folder", root=str(root), size=16, **kw))


def test_folder_formats_and_modes(tmp_path):
    put(tmp_path, "a.png", solid(RED))
    put(tmp_path, "b.jpg", solid(RED, (33, 57)), quality=95)
    put(tmp_path, "c.webp", solid(RED, (16, 16)), lossless=True)
    put(tmp_path, "d.bmp", solid(RED, (17, 9)))
    put(tmp_path, "e.PNG", solid(RED).convert("P"))                         # palette, upper-case extension
    put(tmp_path, "f.png", solid(RED + (255,), mode="RGBA"))                 # opaque RGBA
    put(tmp_path, "g.png", solid((0, 0, 255, 0), mode="RGBA"))               # fully transparent blue
    put(tmp_path, "h.png", Image.fromarray(np.full((20, 30), 32768, np.uint16)))   # 16-bit grayscale
    put(tmp_path, "i.jpg", solid((0, 0, 0, 0), mode="CMYK"))                 # CMYK JPEG, no ink: white
    put(tmp_path, "j.png", solid(128, mode="L"))
    ds = build_image_dataset(ImageData(source="folder", root=str(tmp_path), size=12, channels=3))
    assert len(ds) == 10 and ds.num_classes == 1 and ds.class_names == [tmp_path.name]
    x = {Path(p).name[0]: ds[i][0] for i, p in enumerate(ds.paths)}
    for name in "abcdef":
        assert x[name].shape == (3, 12, 12) and x[name].dtype == torch.float32
        assert torch.allclose(x[name].mean((1, 2)), torch.tensor([1.0, -1, -1]), atol=0.02), name
    assert all(v.shape == (3, 12, 12) and v.dtype == torch.float32 for v in x.values())
    assert torch.allclose(x["g"], torch.ones(3, 12, 12))   # transparent -> white, the hidden blue is gone
    assert torch.allclose(x["h"], torch.zeros(3, 12, 12), atol=1e-3)   # 32768/65535 is mid-gray, not clipped
    assert torch.allclose(x["i"], torch.ones(3, 12, 12), atol=0.02)
    assert torch.allclose(x["j"], torch.full((3, 12, 12), 128 / 127.5 - 1), atol=1e-6)


def test_folder_grayscale_is_luminance(tmp_path):
    put(tmp_path, "g.png", solid(GREEN))
    x, _ = folder(tmp_path, channels=1)[0]
    assert x.shape == (1, 16, 16)
    assert torch.allclose(x, torch.full_like(x, round(0.587 * 255) / 127.5 - 1), atol=1 / 127)


def test_folder_resize_shorter_side_then_center_crop(tmp_path):
    wide = np.zeros((30, 90, 3), np.uint8)
    wide[:, :30], wide[:, 30:60], wide[:, 60:] = RED, GREEN, (0, 0, 255)
    put(tmp_path, "wide.png", Image.fromarray(wide))
    put(tmp_path, "tall.png", Image.fromarray(wide.transpose(1, 0, 2).copy()))
    ds = folder(tmp_path, channels=3)
    for i in range(2):
        x = ds[i][0]
        assert x.shape == (3, 16, 16)
        # only the middle third (green) survives the crop; the interior is pure green
        assert torch.allclose(x[:, 2:-2, 2:-2], torch.tensor([-1.0, 1, -1]).view(3, 1, 1), atol=0.02)


def test_folder_class_subfolders(tmp_path):
    for cls, n in (("dogs", 3), ("cats", 2), ("birds/.cache", 1)):
        for i in range(n):
            put(tmp_path, f"{cls}/{i}.png", solid(RED))
    put(tmp_path, "dogs/puppies/deep.jpg", solid(GREEN))  # nested: still a dog
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    write(tmp_path / "cats" / ".hidden.png", solid(RED))
    ds = folder(tmp_path)
    assert ds.class_names == ["cats", "dogs"]  # sorted; "birds" only has a hidden folder
    assert sorted(ds.labels) == [0, 0, 1, 1, 1, 1]
    assert all(Path(p).parent.name in ("cats", "dogs", "puppies") for p in ds.paths)


def test_folder_mixed_loose_and_classes_is_an_error(tmp_path):
    write(tmp_path / "a" / "1.png", solid(RED))
    write(tmp_path / "loose.png", solid(RED))
    with pytest.raises(ImageDataError, match="mixes 1 loose images .*'loose.png'.* class subfolders"):
        folder(tmp_path)


def test_folder_hash_split(tmp_path):
    for i in range(100):
        write(tmp_path / f"{i:03d}.png", solid((i, i, i), (8, 8)))
    train, test = folder(tmp_path), build_image_dataset(ImageData(source="folder", root=str(tmp_path)), "test")
    assert 3 <= len(test) <= 20 and len(train) + len(test) == 100
    assert set(train.paths).isdisjoint(test.paths)
    in_test = [n for n in sorted(os.listdir(tmp_path))  # the rule the docstring gives, exactly
               if int.from_bytes(hashlib.sha1(n.encode()).digest()[:4], "big") % 10 == 0]
    assert test.paths == [str(tmp_path / n) for n in in_test]
    for i in range(100, 130):  # adding files never moves an existing one across the split
        write(tmp_path / f"{i:03d}.png", solid((i, i, i), (8, 8)))
    test2 = build_image_dataset(ImageData(source="folder", root=str(tmp_path)), "test")
    assert set(test.paths) <= set(test2.paths)


def test_folder_train_test_layout(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        for i in range(n):
            write(tmp_path / split / "zebra" / f"{i}.png", solid(RED))
    write(tmp_path / "train" / "ant" / "0.png", solid(RED))  # a class only in train keeps labels aligned
    train = folder(tmp_path)
    test = build_image_dataset(ImageData(source="folder", root=str(tmp_path)), "test")
    assert (len(train), len(test)) == (5, 2)
    assert train.class_names == test.class_names == ["ant", "zebra"] and test.labels == [1, 1]


def test_folder_max_items_spans_classes(tmp_path):
    for cls in "abc":
        for i in range(20):
            write(tmp_path / cls / f"{i}.png", solid(RED, (4, 4)))
    ds = folder(tmp_path, max_items=12)
    assert len(ds) == 12 and set(ds.labels) == {0, 1, 2}
    assert ds.paths == sorted(ds.paths) and folder(tmp_path, max_items=12).paths == ds.paths


def corrupt_files(root: Path) -> dict:
    """Two good images, a garbage .png and a truncated JPEG, all in the train split."""
    put(root, "good1.png", solid(RED))
    put(root, "good2.jpg", solid(GREEN, (64, 64)))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    bad = {"garbage.png": put(root, "garbage.png", solid(RED)), "truncated.jpg": put(root, "truncated.jpg", solid(RED))}
    bad["garbage.png"].write_bytes(os.urandom(300))
    bad["truncated.jpg"].write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    return bad


@pytest.mark.parametrize("bad", ["garbage.png", "truncated.jpg"])
def test_folder_corrupt_file_raises_naming_it(tmp_path, bad):
    files = corrupt_files(tmp_path)
    files.pop("truncated.jpg" if bad == "garbage.png" else "garbage.png").unlink()
    with pytest.raises(ImageDataError) as e:
        folder(tmp_path)
    msg = str(e.value)
    assert f"cannot read image '{files[bad]}'" in msg and 'set data.on_error = "skip"' in msg


def test_folder_corrupt_files_skipped_with_one_warning(tmp_path):
    files = corrupt_files(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = folder(tmp_path, on_error="skip")
    assert len(ds) == 2 and len(caught) == 1
    msg = str(caught[0].message)
    assert "skipped 2 unreadable image(s)" in msg and "garbage" in msg and "truncated" in msg
    assert sorted(p for p, _ in ds.skipped) == sorted(str(p) for p in files.values())
    assert all(reason for _, reason in ds.skipped)
    torch.stack([ds[i][0] for i in range(len(ds))])  # what is left decodes


def test_folder_truncated_png_and_webp(tmp_path):
    for name, kw in (("t.png", {}), ("t.webp", {"quality": 80})):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
            buf, name.split(".")[1].upper(), **kw)
        put(tmp_path, name, solid(RED)).write_bytes(buf.getvalue()[:int(len(buf.getvalue()) * 0.9)])
    with pytest.raises(ImageDataError, match=r"cannot read image '.*t(_\d+)?\.png': truncated"):
        folder(tmp_path)
    with pytest.warns(UserWarning, match="skipped 2 unreadable"), \
            pytest.raises(ImageDataError, match="all 2 images .* are unreadable"):
        folder(tmp_path, on_error="skip")


def test_folder_file_broken_after_build_names_it(tmp_path):
    path = put(tmp_path, "a.png", solid(RED))
    ds = folder(tmp_path)
    path.write_bytes(b"gone bad")
    with pytest.raises(ImageDataError, match=rf"cannot decode image '.*{path.name}'.*Remove the file"):
        ds[0]


def test_folder_empty_and_missing(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    write(tmp_path / ".thumb.png", solid(RED))
    with pytest.raises(ImageDataError) as e:
        folder(tmp_path)
    msg = str(e.value)
    assert f"no images in '{tmp_path}'" in msg and ".png, .jpg, .jpeg, .webp, .bmp" in msg
    assert "2 other files ignored" in msg
    with pytest.raises(ImageDataError, match="'.*nowhere' does not exist"):
        folder(tmp_path / "nowhere")
    with pytest.raises(ImageDataError, match="root is empty"):
        build_image_dataset(ImageData(source="folder"))


# ---------------------------------------------------------------------------------------- cifar10

def read_batch(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def cifar(root, split="train", **kw):
    return build_image_dataset(ImageData(source="cifar10", root=str(root), **kw), split)


def test_cifar10_real_layout(tmp_path):
    d = write_fake_cifar10(tmp_path, n_per_batch=6)
    assert (d / "data_batch_1").read_bytes()[:2] == b"\x80\x02"  # protocol 2, like the real files
    train, test = cifar(tmp_path, size=32, channels=3), cifar(tmp_path, "test", size=32, channels=3)
    assert (len(train), len(test)) == (30, 6)
    assert train.class_names[0] == "airplane" and train.num_classes == 10
    b3 = read_batch(d / "data_batch_3")
    x, y = train[2 * 6 + 4]  # 5th image of the 3rd batch
    expect = torch.from_numpy(b3[b"data"][4].reshape(3, 32, 32)).float() / 127.5 - 1
    assert torch.equal(x, expect) and y == b3[b"labels"][4]
    assert cifar(d, "test", size=32, channels=3).labels == test.labels  # root may be the batches folder itself


def test_cifar10_gray_resized_max_items(tmp_path):
    write_fake_cifar10(tmp_path, n_per_batch=4)
    ds = cifar(tmp_path, size=16, channels=1, max_items=7)
    assert len(ds) == 7
    x, _ = ds[0]
    assert x.shape == (1, 16, 16) and x.min() >= -1 and x.max() <= 1
    rgb = cifar(tmp_path, size=32, channels=3)[0][0]
    gray = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)
    assert torch.allclose(cifar(tmp_path, size=32, channels=1)[0][0][0], gray, atol=1e-5)


def test_cifar10_missing_says_what_to_download(tmp_path):
    with pytest.raises(ImageDataError) as e:
        cifar(tmp_path / "data")
    msg = str(e.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert str(tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1") in msg


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_refuses_a_malicious_pickle(tmp_path):
    d = write_fake_cifar10(tmp_path, n_per_batch=2)
    evil = _Evil()
    evil.marker = tmp_path / "pwned"
    (d / "data_batch_1").write_bytes(pickle.dumps({"data": evil, "labels": []}))
    with pytest.raises(ImageDataError, match=r"refusing to load '.*data_batch_1'.*system"):
        cifar(tmp_path)
    assert not evil.marker.exists()


def test_cifar10_corrupt_batch_named(tmp_path):
    d = write_fake_cifar10(tmp_path, n_per_batch=2)
    raw = (d / "data_batch_3").read_bytes()
    (d / "data_batch_3").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ImageDataError, match=r"cannot read CIFAR-10 file '.*data_batch_3'.*Re-download"):
        cifar(tmp_path)
    with open(d / "test_batch", "wb") as f:
        Py2Pickler(f, protocol=2).dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]})
    with pytest.raises(ImageDataError, match=r"'.*test_batch' does not hold uint8 data \[N, 3072\]"):
        cifar(tmp_path, "test")
    (d / "data_batch_3").unlink()
    with pytest.raises(ImageDataError, match=r"'.*data_batch_3' is missing"):
        cifar(tmp_path)


# ---------------------------------------------------------------------------------------- batch tools

def test_random_hflip():
    x = torch.randn(64, 2, 5, 7)
    a = random_hflip(x, torch.Generator().manual_seed(3))
    b = random_hflip(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    flipped = torch.tensor([torch.equal(a[i], x[i].flip(-1)) for i in range(64)])
    kept = torch.tensor([torch.equal(a[i], x[i]) for i in range(64)])
    assert (flipped ^ kept).all() and 16 < flipped.sum() < 48
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        random_hflip(x[0], torch.Generator())


def test_save_image_grid(tmp_path):
    x = torch.linspace(-1, 1, 5 * 3 * 8 * 6).view(5, 3, 8, 6)
    x[0] = -1
    x[1] = 1
    out = save_image_grid(x, tmp_path / "new" / "dir" / "grid.png", nrow=3)
    img = Image.open(out)
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (3 * 6 + 4 * 2, 2 * 8 + 3 * 2)
    a = np.asarray(img)
    assert (a[2:10, 2:8] == 0).all() and (a[2:10, 10:16] == 255).all()
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.png"]  # no temp files left
    g = save_image_grid(torch.zeros(4, 1, 4, 4), tmp_path / "gray.png")
    assert Image.open(g).mode == "L" and Image.open(g).size == (14, 14)


def test_save_image_grid_is_atomic(tmp_path, monkeypatch):
    path = save_image_grid(torch.zeros(1, 1, 4, 4), tmp_path / "g.png")
    before = path.read_bytes()

    def crash(self, fp, *a, **k):
        Path(fp).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_image_grid(torch.ones(1, 1, 4, 4), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["g.png"]


def test_load_image(tmp_path):
    write(tmp_path / "photo.jpg", solid(RED, (80, 60)), quality=95)
    x = load_image(tmp_path / "photo.jpg", 24, channels=3)
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    assert torch.allclose(x.mean((1, 2)), torch.tensor([1.0, -1, -1]), atol=0.02)
    assert load_image(str(tmp_path / "photo.jpg"), 8, channels=1).shape == (1, 8, 8)
    with pytest.raises(ImageDataError, match=r"image '.*missing.png' not found"):
        load_image(tmp_path / "missing.png", 8, 3)
    (tmp_path / "bad.webp").write_bytes(b"RIFF\x00\x00\x00\x00junk")
    with pytest.raises(ImageDataError, match=r"cannot read image '.*bad\.webp'"):
        load_image(tmp_path / "bad.webp", 8, 3)
