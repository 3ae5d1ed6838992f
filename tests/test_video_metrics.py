"""Known-frame masks, video metrics against closed forms, FVD plumbing, and the trainer's seeded
items (random clip starts that replay after a resume and do not depend on the process split)."""
import pytest
import torch

from multidiff.data.frame_masks import frames_mask, parse_known_frames, pattern_mask, random_frame_masks
from multidiff.metrics.video import I3DFeatures, centroids, fvd, identity_agreement, motion
from multidiff.engine.trainer import TrainConfig, Trainer


@pytest.mark.parametrize("spec, frames, want", [
    ("0:4", 16, [0, 1, 2, 3]), ("0,15", 16, [0, 15]), ("0:2,7", 8, [0, 1, 7]), ("-1", 8, [7]),
    (":3", 8, [0, 1, 2]), ("6:8", 8, [6, 7]), ("5:", 8, [5, 6, 7]), (" 1 , 3 ", 8, [1, 3]),
])
def test_parse_known_frames(spec, frames, want):
    assert parse_known_frames(spec, frames) == want


@pytest.mark.parametrize("spec, message", [
    ("0,16", "outside"), ("a:3", "not a frame number"), ("3:3", "empty"), ("", "names no frame"),
    ("0:16", "nothing is left"),
])
def test_parse_known_frames_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_known_frames(spec, 16)


def test_masks_have_the_patterns_shapes():
    assert frames_mask([0, 3], 4, batch=2).view(2, 4).tolist() == [[1, 0, 0, 1]] * 2
    assert pattern_mask("prefix", 8, 3).flatten().tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert pattern_mask("ends", 5).flatten().tolist() == [1, 0, 0, 0, 1]
    assert pattern_mask("none", 3).sum() == 0
    u = torch.tensor([[0.1, 0.0], [0.1, 0.99], [0.9, 0.5]])
    m = random_frame_masks(3, 8, ["prefix", "ends"], u).view(3, 8)
    assert m[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]          # prefix, k = 1 + floor(0 * 4)
    assert m[1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]          # prefix, k = 1 + floor(0.99 * 4) = 4 = T // 2
    assert m[2].tolist() == [1, 0, 0, 0, 0, 0, 0, 1]          # ends
    with pytest.raises(ValueError, match="patterns"):
        random_frame_masks(1, 8, ["middle"], u)


def _square_clip(T=6, size=20, v=(1, 2), start=(2, 3)):
    """A 4x4 white square moving at constant velocity v (px/frame) on black: centroid = corner + 1.5."""
    x = -torch.ones(1, 1, T, size, size)
    for t in range(T):
        y0, x0 = start[0] + v[0] * t, start[1] + v[1] * t
        x[0, 0, t, y0:y0 + 4, x0:x0 + 4] = 1
    return x


def test_centroids_and_motion_closed_form():
    clip = _square_clip()
    p = centroids(clip)[0]
    want = torch.tensor([[2 + 1.5 + t, 3 + 1.5 + 2 * t] for t in range(6)], dtype=p.dtype)
    assert torch.allclose(p, want, atol=1e-5)
    m = motion(clip)
    assert m["speed"] == pytest.approx(5 ** 0.5, abs=1e-5) and m["jerk"] == pytest.approx(0, abs=1e-5)
    jumpy = clip.clone()
    jumpy[:, :, 3] = _square_clip(start=(9, 3))[:, :, 0]      # one frame out of place: jerk > 0
    assert motion(jumpy)["jerk"] > 1


def test_identity_agreement():
    labels = torch.tensor([[3, 3, 3, 3], [1, 2, 1, 1], [0, 1, 2, 3]])
    assert identity_agreement(labels).tolist() == [1.0, 0.75, 0.25]


class _TinyI3D(torch.nn.Module):
    """Stands in for the TorchScript I3D: the same call signature, features = pooled pixels."""

    def forward(self, x, rescale: bool = False, resize: bool = True, return_features: bool = True):
        assert x.shape[1] == 3 and not rescale and resize and return_features
        return torch.nn.functional.adaptive_avg_pool3d(x, (2, 2, 2)).flatten(1)


def test_fvd_through_a_torchscript_file(tmp_path):
    path = tmp_path / "i3d.pt"
    with pytest.warns(FutureWarning):  # torch.jit is deprecated, but it is the format I3D weights come in
        torch.jit.script(_TinyI3D()).save(str(path))
    feats = I3DFeatures(path)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(64, 1, 4, 8, 8, generator=g) * 2 - 1
    b = torch.rand(64, 1, 4, 8, 8, generator=g) * 2 - 1
    assert feats(a).shape == (64, 24)
    assert fvd(feats, a, a) == pytest.approx(0, abs=1e-6)
    assert fvd(feats, a, b * 0.3 + 0.5) > 10 * fvd(feats, a, b)
    with pytest.raises(FileNotFoundError, match="i3d_weights"):
        I3DFeatures(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="TorchScript"):
        I3DFeatures(tmp_path / "junk.pt")


class _SeededItems(torch.utils.data.Dataset):
    seeded_items = True

    def __len__(self):
        return 12

    def __getitem__(self, item):
        return item


class _Null:
    channels_last = False


def test_trainer_gives_seeded_items_independent_of_accumulation(tmp_path):
    model = torch.nn.Linear(1, 1)
    one = Trainer(model, _SeededItems(), _Null(), TrainConfig(batch_size=4, steps=5), tmp_path / "a")
    two = Trainer(model, _SeededItems(), _Null(), TrainConfig(batch_size=4, grad_accum=2, steps=5), tmp_path / "b")
    for step in range(5):
        full = one._indices(step, 0)
        assert all(isinstance(i, int) and isinstance(s, int) for i, s in full)
        assert two._indices(step, 0) + two._indices(step, 1) == full     # same items, same seeds
    seeds = [s for step in range(5) for _, s in one._indices(step, 0)]
    assert len(set(seeds)) == len(seeds)                                   # a fresh draw per (step, position)
    other = Trainer(model, _SeededItems(), _Null(), TrainConfig(batch_size=4, steps=5, seed=1), tmp_path / "c")
    assert [s for _, s in other._indices(0, 0)] != [s for _, s in one._indices(0, 0)]


def test_real_clips_spread_over_the_classes():
    from multidiff.evaluation.video import real_clips

    class Ds:  # 40 clips in class-folder order, 4 per class
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return torch.full((1, 2, 4, 4), float(i)), i // 4

    clips, labels = real_clips(Ds(), 10)
    assert sorted(set(labels.tolist())) == list(range(10)) and clips.shape == (10, 1, 2, 4, 4)
    assert len(real_clips(Ds())[0]) == 40
