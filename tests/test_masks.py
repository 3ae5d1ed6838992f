"""Inpainting masks: 1 = known, 0 = to fill; float32 [1, H, W]; deterministic given a generator."""
import numpy as np
import pytest
import torch
from PIL import Image

from multidiff.data.masks import MASK_KINDS, load_mask, make_mask, mask_kind_names, random_masks

SIZES = [32, (24, 40), (40, 24)]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def hole_fraction(m):
    return 1 - m.mean().item()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_shape_dtype_binary(kind, size):
    h, w = (size, size) if isinstance(size, int) else size
    for seed in range(5):
        m = make_mask(kind, size, gen(seed))
        assert m.shape == (1, h, w) and m.dtype == torch.float32
        assert set(m.unique().tolist()) == {0.0, 1.0}  # never all known, never all unknown


def test_halves_exact():
    m = {k: make_mask(k, (6, 8))[0] for k in ("left", "right", "top", "bottom")}
    assert (m["left"][:, :4] == 0).all() and (m["left"][:, 4:] == 1).all()
    assert (m["right"][:, :4] == 1).all() and (m["right"][:, 4:] == 0).all()
    assert (m["top"][:3] == 0).all() and (m["top"][3:] == 1).all()
    assert (m["bottom"][:3] == 1).all() and (m["bottom"][3:] == 0).all()
    assert hole_fraction(make_mask("left", 7)) == pytest.approx(3 / 7)  # odd: floor(W/2) columns


def test_center_exact():
    m = make_mask("center", 32)[0]
    expect = torch.ones(32, 32)
    expect[8:24, 8:24] = 0
    assert torch.equal(m, expect)
    r = make_mask("center", (16, 32))[0]
    assert (r == 0).nonzero().amin(0).tolist() == [4, 8] and (r == 0).nonzero().amax(0).tolist() == [11, 23]


@pytest.mark.parametrize("size", SIZES)
def test_box_sides(size):
    h, w = (size, size) if isinstance(size, int) else size
    for seed in range(50):
        hole = (make_mask("box", size, gen(seed))[0] == 0).nonzero()
        bh, bw = (hole.amax(0) - hole.amin(0) + 1).tolist()
        assert h / 4 <= bh <= h / 2 and w / 4 <= bw <= w / 2
        assert len(hole) == bh * bw  # one solid rectangle


@pytest.mark.parametrize("size", [32, 64, (48, 96)])
def test_strokes_coverage(size):
    cover = [hole_fraction(make_mask("strokes", size, gen(s))) for s in range(60)]
    assert 0.15 <= min(cover) and max(cover) <= 0.5
    assert np.std(cover) > 0.04  # the target coverage varies, not one fixed amount


def test_strokes_are_irregular():
    # a free-form mask is not a rectangle: its hole fills well under its bounding box
    m = make_mask("strokes", 64, gen(3))[0]
    hole = (m == 0).nonzero()
    box = (hole.amax(0) - hole.amin(0) + 1).prod().item()
    assert len(hole) < 0.8 * box


def test_mixture_uses_several_kinds():
    masks = random_masks(40, 32, generator=gen(1))
    assert len({tuple(m.flatten().tolist()) for m in masks}) >= 35
    center = make_mask("center", 32)
    halves = [make_mask(k, 32) for k in ("left", "right", "top", "bottom")]
    n_center = sum(torch.equal(m, center) for m in masks)
    n_halves = sum(any(torch.equal(m, h) for h in halves) for m in masks)
    assert 0 < n_center + n_halves < 20


@pytest.mark.parametrize("kind", ["box", "strokes", "mixture"])
def test_deterministic_with_generator_and_varied_without(kind):
    assert torch.equal(make_mask(kind, (20, 36), gen(7)), make_mask(kind, (20, 36), gen(7)))
    assert not torch.equal(make_mask(kind, 32, gen(1)), make_mask(kind, 32, gen(2)))
    draws = [make_mask(kind, 32) for _ in range(8)]  # the global RNG
    assert len({tuple(d.flatten().tolist()) for d in draws}) > 1


def test_random_masks():
    a = random_masks(6, (16, 24), kinds=("left", "box"), generator=gen(0))
    b = random_masks(6, (16, 24), kinds=("left", "box"), generator=gen(0))
    assert a.shape == (6, 1, 16, 24) and a.dtype == torch.float32 and torch.equal(a, b)
    left = make_mask("left", (16, 24))
    assert 0 < sum(torch.equal(m, left) for m in a) < 6  # each sample draws its own kind
    assert random_masks(3, 8, kinds="center").shape == (3, 1, 8, 8)
    assert random_masks(0, 8).shape == (0, 1, 8, 8)


def test_errors():
    with pytest.raises(ValueError, match="unknown mask kind 'circle'; choose one of: box, center, left"):
        make_mask("circle", 32)
    with pytest.raises(ValueError, match="strokes, mixture"):
        random_masks(2, 32, kinds=("box", "blob"))
    with pytest.raises(ValueError, match="at least one kind"):
        random_masks(2, 32, kinds=())
    for bad in (1, (32,), (32, 0), 32.0, "32"):
        with pytest.raises(ValueError, match="mask size"):
            make_mask("box", bad)
    assert mask_kind_names() == ", ".join(MASK_KINDS)


# ---------------------------------------------------------------------------------------- load_mask

def save(tmp_path, arr, name="mask.png", mode=None):
    p = tmp_path / name
    Image.fromarray(arr, mode).save(p) if mode else Image.fromarray(arr).save(p)
    return p


def test_load_mask_white_is_fill(tmp_path):
    a = np.zeros((32, 32), np.uint8)
    a[8:16, 4:20] = 255
    m = load_mask(save(tmp_path, a), 32)
    assert m.shape == (1, 32, 32) and m.dtype == torch.float32
    assert (m[0, 8:16, 4:20] == 0).all() and m.sum() == 32 * 32 - 8 * 16


def test_load_mask_resizes_nearest_and_thresholds(tmp_path):
    a = np.zeros((64, 64), np.uint8)
    a[:, :32] = 200   # light gray -> fill
    a[:16, 32:] = 100  # dark gray -> keep
    with pytest.warns(UserWarning, match="mid-gray"):  # a mask should be black and white: say so
        m = load_mask(save(tmp_path, a), 16)[0]
    assert (m[:, :8] == 0).all() and (m[:, 8:] == 1).all()


def test_load_mask_modes(tmp_path):
    a = np.zeros((20, 20), np.uint8)
    a[5:10, 5:10] = 255
    expect = load_mask(save(tmp_path, a), 20)
    rgb = save(tmp_path, np.stack([a] * 3, -1), "rgb.png")
    g16 = save(tmp_path, a.astype(np.uint16) * 257, "g16.png")
    pal = tmp_path / "p.png"
    Image.fromarray(a).convert("P").save(pal)
    jpg = tmp_path / "m.jpg"
    Image.fromarray(a).save(jpg, quality=80)
    # white strokes painted on a transparent layer: transparent = keep
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = 255           # white everywhere, but only the square is opaque
    rgba[5:10, 5:10, 3] = 255
    rgba_p = save(tmp_path, rgba, "rgba.png")
    for p in (rgb, g16, pal, jpg, rgba_p):
        assert torch.equal(load_mask(p, 20), expect), p


def test_load_mask_lines_up_with_load_image(tmp_path):
    from multidiff.data.image import load_image

    # a 60x40 (w x h) picture, bright where the mask is white; both are center-cropped the same way
    a = np.zeros((40, 60), np.uint8)
    a[10:30, 30:50] = 255
    save(tmp_path, a, "pic.png")
    mask = load_mask(save(tmp_path, a), 20)[0]
    img = load_image(tmp_path / "pic.png", 20, channels=1)[0]
    assert torch.equal(mask == 0, img > 0)


def test_load_mask_non_square(tmp_path):
    a = np.zeros((30, 60), np.uint8)
    a[:, 30:] = 255
    m = load_mask(save(tmp_path, a), (10, 20))
    assert m.shape == (1, 10, 20) and (m[0, :, :10] == 1).all() and (m[0, :, 10:] == 0).all()


def test_load_mask_errors(tmp_path):
    with pytest.raises(ValueError, match="mask '.*nope.png' not found"):
        load_mask(tmp_path / "nope.png", 16)
    (tmp_path / "bad.png").write_bytes(b"not a png at all" * 20)
    with pytest.raises(ValueError, match=r"cannot read mask '.*bad\.png'.*white = region to fill"):
        load_mask(tmp_path / "bad.png", 16)
    with pytest.raises(ValueError, match="nothing to fill"):
        load_mask(save(tmp_path, np.zeros((16, 16), np.uint8), "black.png"), 16)
    with pytest.raises(ValueError, match="nothing known"):
        load_mask(save(tmp_path, np.full((16, 16), 255, np.uint8), "white.png"), 16)
    photo = np.random.default_rng(0).integers(60, 200, (32, 32), dtype=np.uint8)
    with pytest.warns(UserWarning, match="mid-gray: is it really a mask"):
        load_mask(save(tmp_path, photo, "photo.png"), 16)
