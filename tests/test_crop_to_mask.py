"""`multidiff inpaint --crop-to-mask [--feather PX]` (issue 17, part 3): a large picture is completed by a
small model in a crop around the hole, pasted back at full resolution. Pixels outside the hole (and its
feather band, which lies inside the hole) are the input's byte for byte; the band is a blend; a
1024x768 photo with a 64 px model works in one command.

The geometry (data/crops.py) is tested on its own; the command runs a 64 px image run with random
weights (no training: only the paste is under test, not the fill's quality)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from multidiff.cli import main
from multidiff.data.crops import blend_weights, crop_box, hole_coverage, paste, read_hole, to_model
from multidiff.engine.runs import load_recipe, save_resolved
from multidiff.kinds import schemas
from multidiff.modalities.image import IMAGE

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).parent.parent
MODEL = 64


def hole_at(H, W, top, left, h, w) -> np.ndarray:
    hole = np.zeros((H, W), dtype=bool)
    hole[top:top + h, left:left + w] = True
    return hole


# ---- geometry ----------------------------------------------------------------------------------------
def test_crop_box_is_a_square_around_the_hole_inside_the_picture():
    hole = hole_at(768, 1024, 300, 400, 40, 100)
    b = crop_box(hole, MODEL)
    assert b.width == b.height >= 100 + 2 * 25
    assert b.top <= 300 and b.top + b.height >= 340 and b.left <= 400 and b.left + b.width >= 500
    assert (b.left + b.width / 2 - 450) ** 2 <= 1 and (b.top + b.height / 2 - 320) ** 2 <= 1  # centered on the hole
    # a small hole gets at least the model's size (not blown up); near a corner the box is shifted inside
    small = crop_box(hole_at(768, 1024, 2, 1015, 5, 6), MODEL)
    assert (small.height, small.width) == (MODEL, MODEL) and (small.top, small.left) == (0, 1024 - MODEL)
    # a hole wider than the picture is high: a rectangle (stretched to the model's square), the hole inside
    wide = crop_box(hole_at(100, 400, 40, 10, 20, 300), MODEL)
    assert (wide.top, wide.height, wide.left, wide.width) == (0, 100, 0, 400)  # 300 + 2 x 75 margin, clamped
    # ... but a hole that fits the short side keeps a square (no stretch), with less margin
    long = crop_box(hole_at(768, 1024, 300, 100, 50, 700), MODEL)
    assert long.height == long.width == 768 and long.left <= 100 and long.left + long.width >= 800


def test_hole_coverage_marks_every_model_pixel_a_hole_pixel_falls_in():
    hole = np.zeros((100, 100), dtype=bool)
    hole[37, 61] = True  # one pixel
    cov = hole_coverage(hole, 10)
    assert cov.sum() == 1 and cov[3, 6]
    hole[:] = False
    hole[49, 49] = True  # 96 -> 64 px: model pixels 32 and 33 cover rows [48, 49.5) and [49.5, 51): both get it
    cov = hole_coverage(hole[:96, :96], 64)
    assert int(cov.sum()) == 4 and bool(cov[32:34, 32:34].all())
    # upsampling (a crop smaller than the model): every covering model pixel
    assert int(hole_coverage(hole_at(8, 8, 2, 2, 1, 1), 16).sum()) == 4


def test_to_model_mask_covers_the_hole_grown_by_one():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    hole = hole_at(200, 300, 80, 120, 30, 40)
    box = crop_box(hole, MODEL)
    signal, mask = to_model(picture, hole, box, MODEL)
    assert signal.shape == (1, 3, MODEL, MODEL) and mask.shape == (1, 1, MODEL, MODEL)
    assert signal.min() >= -1 and signal.max() <= 1
    cov = hole_coverage(hole[box.slices], MODEL)
    assert bool((mask[0, 0][cov] == 0).all())          # every hole pixel's model pixel is unknown
    assert int((mask == 0).sum()) > int(cov.sum())    # and a ring around it
    assert bool((mask[0, 0, :2] == 1).all())           # context stays known


def test_blend_weights_ramp_inside_the_hole_only():
    hole = hole_at(60, 80, 10, 20, 30, 40)
    w0 = blend_weights(hole, 0)
    assert np.array_equal(w0, hole.astype(np.float32))
    w = blend_weights(hole, 8)
    assert (w[~hole] == 0).all() and (w[hole] > 0).all()
    assert w[10, 40] == pytest.approx(1 / 9) and w[11, 40] == pytest.approx(2 / 9)  # d = 1, 2 from the border
    assert w[18, 40] == 1.0 and w[25, 40] == 1.0                                   # d >= 9: the fill alone
    band = hole & (w < 1)
    assert band.sum() == hole.sum() - (30 - 16) * (40 - 16)  # 8 px wide on every side
    # the windowed distance transform equals the whole picture's
    from scipy.ndimage import distance_transform_edt
    whole = np.minimum(distance_transform_edt(hole) / 9, 1)
    np.testing.assert_allclose(w, whole, atol=1e-6)


def test_paste_leaves_everything_outside_the_hole_bit_identical():
    rng = np.random.default_rng(1)
    picture = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    hole = hole_at(120, 160, 40, 60, 20, 30)
    box = crop_box(hole, 32)
    completed = torch.rand(3, 32, 32) * 2 - 1
    for feather in (0, 4):
        w = blend_weights(hole, feather)
        out = paste(picture, completed, box, w)
        assert out.dtype == np.uint8 and out.shape == picture.shape
        assert np.array_equal(out[~hole], picture[~hole])
        assert (out[hole] != picture[hole]).any()
    # the band: a blend of the picture and the full fill (feather 0), weight d / (feather + 1)
    full = paste(picture, completed, box, blend_weights(hole, 0)).astype(float)
    w = blend_weights(hole, 4)
    soft = paste(picture, completed, box, w).astype(float)
    expect = w[..., None] * full + (1 - w[..., None]) * picture
    assert np.abs(soft - expect).max() <= 1.0


def test_read_hole_checks_the_size(tmp_path):
    Image.fromarray(hole_at(30, 40, 5, 5, 10, 10).astype(np.uint8) * 255).save(tmp_path / "m.png")
    assert read_hole(tmp_path / "m.png", 30, 40).sum() == 100
    with pytest.raises(ValueError, match="--resize-mask"):
        read_hole(tmp_path / "m.png", 60, 80)
    assert read_hole(tmp_path / "m.png", 60, 80, stretch=True).sum() == 400
    Image.new("L", (40, 30)).save(tmp_path / "black.png")
    with pytest.raises(ValueError, match="nothing to fill"):
        read_hole(tmp_path / "black.png", 30, 40)


# ---- the command -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 64 px RGB image run with random weights (a checkpoint, no training)."""
    d = tmp_path_factory.mktemp("crop") / "run"
    over = [f"data.size={MODEL}", "data.channels=3", "model.in_channels=3", f"model.image_size={MODEL}",
            "model.base_channels=16", "model.channel_mult=[1,2]", "model.num_res_blocks=1",
            "model.attention_resolutions=[]", "model.num_classes=0", "model.norm_groups=8", "sample.guidance_scale=1.0"]
    _, sections = load_recipe(ROOT / "recipes" / "image_digits", over, schemas())
    save_resolved(d, sections)
    torch.manual_seed(0)
    model = IMAGE.build_model(sections)
    with torch.no_grad():  # a random, non-zero output layer: the fill differs from the input
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ckpt = d / "checkpoints" / "step_0000001"
    ckpt.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt / "ema.safetensors"))
    return d


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 1024x768 'photo' (smooth gradients + noise) and a mask with one hole."""
    tmp = tmp_path_factory.mktemp("photo")
    y, x = np.mgrid[0:768, 0:1024]
    rng = np.random.default_rng(0)
    img = np.stack([x / 4, y / 3, (x + y) / 7], -1) % 256 + rng.normal(0, 8, (768, 1024, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(tmp / "photo.png")
    hole = np.zeros((768, 1024), dtype=bool)
    yy, xx = np.ogrid[0:768, 0:1024]
    hole |= (yy - 400) ** 2 / 60 ** 2 + (xx - 610) ** 2 / 90 ** 2 <= 1  # an ellipse
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp / "mask.png")
    return tmp, hole


def inpaint(run, photo_dir, out, *extra) -> int:
    return main(["inpaint", str(run), "--image", str(photo_dir / "photo.png"), "--mask", str(photo_dir / "mask.png"),
                 "--crop-to-mask", "--method", "replace", "--steps", "3", "--precision", "fp32", "--out", str(out),
                 *map(str, extra)])


def test_a_1024x768_photo_with_a_64px_model(run, photo, tmp_path, capsys):
    photo_dir, hole = photo
    before = np.asarray(Image.open(photo_dir / "photo.png"))
    assert inpaint(run, photo_dir, tmp_path / "f8.png", "--feather", "8") == 0
    assert "pasted back into 1024x768 with a 8 px feather" in capsys.readouterr().out
    assert inpaint(run, photo_dir, tmp_path / "f0.png", "--feather", "0") == 0
    f8, f0 = np.asarray(Image.open(tmp_path / "f8.png")), np.asarray(Image.open(tmp_path / "f0.png"))
    assert f8.shape == f0.shape == before.shape == (768, 1024, 3)
    # outside the hole (the feather band lies inside it): the input, byte for byte
    assert np.array_equal(f8[~hole], before[~hole]) and np.array_equal(f0[~hole], before[~hole])
    # --feather 0: the hole alone changes, all of it filled
    assert (f0[hole] != before[hole]).any(axis=-1).mean() > 0.9
    # --feather 8: the band is the blend of the input and the fill, the rest of the hole the fill alone
    w = blend_weights(hole, 8)
    expect = w[..., None] * f0.astype(float) + (1 - w[..., None]) * before
    assert np.abs(f8.astype(float) - expect).max() <= 1.0
    band = hole & (w < 1)
    assert band.sum() > 0 and np.array_equal(f8[hole & ~band], f0[hole & ~band])
    assert not np.array_equal(f8[band], f0[band])


def test_crop_to_mask_with_a_generated_mask_and_refusals(run, photo, tmp_path, capsys):
    photo_dir, _ = photo
    out = tmp_path / "center.png"
    assert main(["inpaint", str(run), "--image", str(photo_dir / "photo.png"), "--mask-kind", "center",
                 "--crop-to-mask", "--method", "replace", "--steps", "2", "--out", str(out)]) == 0
    before, after = np.asarray(Image.open(photo_dir / "photo.png")), np.asarray(Image.open(out))
    known = np.ones((768, 1024), dtype=bool)
    known[192:576, 256:768] = False  # the center mask: half the height and width
    assert np.array_equal(after[known], before[known])
    capsys.readouterr()
    for args, words in ((["--feather", "4"], "add --crop-to-mask"),
                        (["--crop-to-mask", "--feather", "-1"], "must be >= 0")):
        assert main(["inpaint", str(run), "--image", str(photo_dir / "photo.png"), "--mask-kind", "center",
                     "--out", str(tmp_path / "x.png"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    Image.new("L", (100, 80), 255).save(tmp_path / "small_mask.png")
    assert main(["inpaint", str(run), "--image", str(photo_dir / "photo.png"), "--mask",
                 str(tmp_path / "small_mask.png"), "--crop-to-mask", "--out", str(tmp_path / "x.png")]) == 2
    assert "--resize-mask" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
