"""nn/conditioning.py: the one label embedding (null label, condition dropout) the three denoisers share,
the null branch of classifier-free guidance, and the class_dropout check."""
import math

import pytest
import torch
from torch import nn

from multidiff.models import unet2d, unet3d
from multidiff.models.diffwave import model as diffwave
from multidiff.nn import LabelEmbedding, check_class_dropout, null_condition

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.py)

UNET = dict(base_channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4], num_heads=2,
            norm_groups=8, image_size=8, dropout=0.0)
WAVE = dict(residual_channels=8, residual_layers=4, dilation_cycle=2, n_mels=0, hop_length=16)


def build(kind: str, **kw) -> nn.Module:
    if kind == "unet2d":
        return unet2d.UNet2D(unet2d.UNet2DConfig(**{**UNET, **kw}))
    if kind == "unet3d":
        return unet3d.UNet3D(unet3d.UNet3DConfig(**{**UNET, "frames": 2, **kw}))
    return diffwave.DiffWave(**{**WAVE, **kw})


def inputs(kind: str, b: int):
    g = torch.Generator().manual_seed(3)
    shape = {"unet2d": (b, 1, 8, 8), "unet3d": (b, 1, 2, 8, 8), "diffwave": (b, 1, 32)}[kind]
    return torch.randn(shape, generator=g), torch.linspace(1.0, 40.0, b)


def today_labels(y, batch, null, p, training, device="cpu"):
    """The three models' label code before nn/conditioning.py, line for line: the reference."""
    if y is None:
        return torch.full((batch,), null, dtype=torch.long, device=device)
    if training and p > 0:
        drop = torch.rand(y.shape, device=y.device) < p
        y = torch.where(drop, torch.full_like(y, null), y)
    return y


KINDS = ["unet2d", "unet3d", "diffwave"]
LABEL_KEY = {"unet2d": "label_embed.weight", "unet3d": "label_embed.weight", "diffwave": "label_embedding.weight"}


def test_dropout_rate_follows_p_with_a_seeded_rng():
    emb = LabelEmbedding(10, 4, dropout=0.3).train()
    y = torch.zeros(20000, dtype=torch.long)
    torch.manual_seed(0)
    frac = (emb.labels(y, 20000, "cpu") == emb.null_label).float().mean().item()
    assert abs(frac - 0.3) < 5 * math.sqrt(0.3 * 0.7 / 20000), frac
    torch.manual_seed(0)  # the same seed, the same labels dropped as today's code
    ours = emb.labels(y, 20000, "cpu")
    torch.manual_seed(0)
    assert torch.equal(ours, today_labels(y, 20000, 10, 0.3, True))
    assert not torch.equal(emb.labels(y, 20000, "cpu"), emb.labels(y, 20000, "cpu"))  # fresh draws each call
    assert (emb.labels(y, 20000, "cpu", dropout=1.0) == 10).all()  # the per-call rate wins over the stored one
    state = torch.get_rng_state()
    assert torch.equal(emb.labels(y, 20000, "cpu", dropout=0.0), y)  # p = 0: nothing dropped, nothing drawn
    emb.eval()
    assert torch.equal(emb.labels(y, 20000, "cpu"), y)  # eval: never
    assert torch.equal(torch.get_rng_state(), state)


def test_none_means_the_null_label_and_draws_nothing():
    emb = LabelEmbedding(5, 8, dropout=0.5).train()
    state = torch.get_rng_state()
    y = emb.labels(None, 3, "cpu")
    assert y.dtype == torch.long and y.tolist() == [5, 5, 5] and emb.null_label == 5
    torch.testing.assert_close(emb.embed(None, 3, "cpu"), emb.weight[5].expand(3, 8), rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert emb.num_embeddings == 6 and isinstance(emb, nn.Embedding)
    assert torch.equal(emb(torch.tensor([1, 5])), emb.weight[[1, 5]])  # calling it is a plain lookup
    with pytest.raises(ValueError, match="num_classes"):
        LabelEmbedding(0, 8)


def test_null_condition():
    mel = torch.randn(2, 6, 4)
    cond = {"y": torch.tensor([0, 2], dtype=torch.int32), "mel": mel}
    null = null_condition(cond, 3)
    assert null["y"].tolist() == [3, 3] and null["y"].dtype == torch.int32
    assert null["mel"] is mel and set(null) == {"y", "mel"}
    assert cond["y"].tolist() == [0, 2]  # the condition itself is left as it was
    assert null_condition({"y": torch.tensor([1])}, 7)["y"].tolist() == [7]
    assert null_condition({"y": None}, 7) == {"y": None}  # y=None is the null label already
    no_y = {"mel": mel}
    assert null_condition(no_y, 3) == no_y and null_condition(no_y, 3) is not no_y  # y absent: already null
    with pytest.raises(ValueError, match="num_classes"):
        null_condition(cond, 0)


@pytest.mark.parametrize("value", [0, 0.0, 0.1, 1, 1.0])
def test_check_class_dropout_accepts(value):
    assert check_class_dropout(value) == float(value)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "x", None])
def test_check_class_dropout_rejects(value):
    with pytest.raises(ValueError, match=r"\[model\] class_dropout must be in \[0, 1\]"):
        check_class_dropout(value)


@pytest.mark.parametrize("kind", KINDS)
def test_models_reject_a_bad_class_dropout(kind):
    with pytest.raises(ValueError, match="class_dropout"):
        build(kind, num_classes=3, class_dropout=1.5)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_keys_and_init_unchanged(kind, monkeypatch):
    """Checkpoints (and lmnt-com/diffwave imports) load as they are: the same keys, the same shapes, and a
    seeded model starts from the very weights the nn.Embedding version did."""
    torch.manual_seed(0)
    new = build(kind, num_classes=3)
    sd = new.state_dict()
    assert [k for k in sd if "label" in k] == [LABEL_KEY[kind]]
    dim = 512 if kind == "diffwave" else 4 * UNET["base_channels"]
    assert tuple(sd[LABEL_KEY[kind]].shape) == (4, dim)
    assert isinstance(getattr(new, LABEL_KEY[kind].split(".")[0]), LabelEmbedding) and new.null_label == 3
    assert build(kind).null_label == -1 and getattr(build(kind), LABEL_KEY[kind].split(".")[0]) is None
    module = {"unet2d": unet2d, "unet3d": unet3d, "diffwave": diffwave}[kind]
    monkeypatch.setattr(module, "LabelEmbedding", lambda k, d, p: nn.Embedding(k + 1, d))  # today's constructor
    torch.manual_seed(0)
    old = build(kind, num_classes=3)
    old_sd = old.state_dict()
    assert list(old_sd) == list(sd)
    for k in sd:
        assert torch.equal(old_sd[k], sd[k]), k
    new.load_state_dict(old_sd, strict=True)


@pytest.mark.parametrize("kind", KINDS)
def test_training_forward_is_bit_identical_to_todays(kind):
    """Under a fixed seed, a training forward draws what today's three lines drew (one torch.rand of y's
    shape), gives the same output bit for bit, and leaves the RNG where they left it."""
    m = build(kind, num_classes=3, class_dropout=0.5)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    x, t = inputs(kind, 16)
    y = torch.tensor([0, 1, 2] * 5 + [1], dtype=torch.int32)
    m.train()
    torch.manual_seed(123)
    seen = []
    hook = getattr(m, LABEL_KEY[kind].split(".")[0]).register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].clone()))
    out = m(x, t, y=y)
    after = torch.rand(4)
    hook.remove()

    torch.manual_seed(123)
    y_ref = today_labels(y, 16, 3, 0.5, True)
    after_ref = torch.rand(4)
    assert torch.equal(seen[0], y_ref.long()) and 0 < int((y_ref == 3).sum()) < 16
    assert torch.equal(after, after_ref)
    m.eval()  # the rest of the net has no randomness: the same labels give the same output, bit for bit
    assert torch.equal(out, m(x, t, y=y_ref))

    m.train()  # y=None in training: the null label, and no draw
    state = torch.get_rng_state()
    none_out = m(x, t)
    assert torch.equal(torch.get_rng_state(), state)
    m.eval()
    assert torch.equal(none_out, m(x, t, y=torch.full((16,), 3)))
