"""UNet2D and the shared multidiff.nn blocks: shapes, conditioning, init, speed path, errors."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from helpers.denoisers import assert_starts_at_zero_then_learns
from multidiff.models.unet2d import UNet2D, UNet2DConfig
from multidiff.nn import (Downsample, GroupNorm, ResBlock, SelfAttention, TimestepEmbedding, Upsample, dropout,
                          timestep_embedding)
from multidiff.nn.attention import attention

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.py)


TINY = dict(base_channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4], num_heads=2,
            norm_groups=8, image_size=8, dropout=0.0)


def tiny(**kw):
    return UNet2D(UNet2DConfig(**{**TINY, **kw}))


def randomize_zero_init(model: nn.Module) -> nn.Module:
    """Give the zero-initialised layers random weights, so outputs depend on every input."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def x_t(b=2, c=1, s=8, seed=0):
    return torch.randn(b, c, s, s, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw,cond", [
    (dict(in_channels=1), {}),
    (dict(in_channels=3), {}),
    (dict(in_channels=3, out_channels=6), {}),
    (dict(in_channels=1, num_classes=10), {"y": torch.tensor([3, 10])}),
    (dict(in_channels=1, extra_in_channels=2), {"concat": torch.randn(2, 2, 8, 8)}),
    (dict(in_channels=3, channel_mult=[1, 2, 2], image_size=16, attention_resolutions=[8, 4],
          scale_shift_norm=False), {}),
])
def test_output_shape(kw, cond):
    m = tiny(**kw)
    x = x_t(c=kw["in_channels"], s=kw.get("image_size", 8))
    out = m(x, torch.tensor([1.0, 999.0]), **cond)
    want_c = kw.get("out_channels") or kw["in_channels"]
    assert out.shape == (2, want_c, *x.shape[2:]) and out.dtype == x.dtype


def test_zero_init_output_then_learns():
    torch.manual_seed(0)
    m = tiny(in_channels=1)
    x, t = x_t(b=4), torch.tensor([10.0, 200.5, 500.0, 900.25])
    assert_starts_at_zero_then_learns(m, x, t, steps=30)


def test_fractional_timesteps():
    emb = timestep_embedding(torch.tensor([999.0, 999.25, 999.5]), 64)
    assert emb.dtype == torch.float32 and emb.shape == (3, 64)
    assert (emb[0] - emb[1]).abs().max() > 1e-3 and (emb[1] - emb[2]).abs().max() > 1e-3
    with torch.autocast("cpu", torch.bfloat16):  # the sinusoid and the MLP stay fp32 under autocast
        te = TimestepEmbedding(64)
        assert te(torch.tensor([999.0, 999.25])).dtype == torch.float32
        assert torch.equal(timestep_embedding(torch.tensor([999.0, 999.25, 999.5]), 64), emb)
    m = randomize_zero_init(tiny()).eval()
    x = x_t()
    a = m(x, torch.tensor([10.0, 10.0]))
    b = m(x, torch.tensor([10.5, 10.5]))
    assert (a - b).abs().max() > 1e-4
    assert torch.equal(m(x, torch.tensor(10.0)), a)  # a scalar t is broadcast over the batch
    assert torch.equal(m(x, torch.tensor([10, 10])), a)  # integer t is fine too


def test_class_conditioning_and_null_label():
    m = randomize_zero_init(tiny(num_classes=5, class_dropout=1.0))
    assert m.null_label == 5 and tiny().null_label == -1
    x, t, y = x_t(), torch.tensor([50.0, 50.0]), torch.tensor([1, 3])
    null = torch.full((2,), m.null_label)
    m.eval()  # no class dropout at eval
    out_y, out_null = m(x, t, y=y), m(x, t, y=null)
    assert (out_y - out_null).abs().max() > 1e-4
    assert torch.equal(m(x, t), out_null)  # y=None means the null label
    assert (m(x, t, y=torch.tensor([1, 1])) - out_y).abs().max() > 1e-4
    m.train()  # class_dropout=1: every label is replaced by the null label
    assert torch.allclose(m(x, t, y=y), out_null)
    m.cfg.class_dropout = 0.0  # and never with 0
    assert torch.allclose(m(x, t, y=y), out_y)
    m.cfg.class_dropout = 0.5  # about half of them
    seen = []
    hook = m.label_embed.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    torch.manual_seed(0)
    m(x_t(b=2000, seed=1), torch.full((2000,), 5.0), y=torch.zeros(2000, dtype=torch.long))
    hook.remove()
    frac = (seen[0] == m.null_label).float().mean().item()
    assert 0.45 < frac < 0.55, frac


def test_extra_input_channels_are_used():
    m = randomize_zero_init(tiny(in_channels=1, extra_in_channels=2)).eval()
    x, t = x_t(), torch.tensor([5.0, 5.0])
    c1, c2 = torch.zeros(2, 2, 8, 8), torch.ones(2, 2, 8, 8)
    assert (m(x, t, concat=c1) - m(x, t, concat=c2)).abs().max() > 1e-4


class _LayoutSpy(TorchDispatchMode):
    """Records every op that materialises a feature map [B, C, S, S] in NCHW order."""

    def __init__(self, batch, sizes):
        super().__init__()
        self.batch, self.sizes, self.bad = batch, sizes, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and o.ndim == 4 and o.shape[0] == self.batch and o.shape[1] > 1 \
                    and o.shape[2] == o.shape[3] and o.shape[2] in self.sizes and o.is_contiguous() \
                    and not o.is_contiguous(memory_format=torch.channels_last):
                self.bad.append((str(func), tuple(o.shape)))
        return out


def test_channels_last_bf16_matches_fp32_and_stays_channels_last():
    cfg = dict(in_channels=3, num_classes=4, channel_mult=[1, 2], attention_resolutions=[8, 4], dropout=0.0,
               class_dropout=0.0)
    ref = randomize_zero_init(tiny(**cfg))
    fast = tiny(**cfg)
    fast.load_state_dict(ref.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    x, t, y = x_t(b=4, c=3), torch.tensor([3.0, 250.5, 600.0, 999.0]), torch.tensor([0, 1, 2, 4])
    w = torch.randn(4, 3, 8, 8).to(memory_format=torch.channels_last)  # a channels_last loss gradient
    out_ref = ref(x, t, y=y)
    (out_ref * w).sum().backward()
    xc = x.to(memory_format=torch.channels_last)
    spy = _LayoutSpy(4, (8, 4))
    with torch.autocast("cpu", torch.bfloat16), spy:
        out = fast(xc, t, y=y)
        loss = (out.float() * w).sum()
    with spy:
        loss.backward()
    assert spy.bad == [], f"ops that produced NCHW activations: {spy.bad[:5]}"
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    rel = (out - out_ref).norm() / out_ref.norm()
    assert rel < 0.05, rel
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        assert q.grad is not None and q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all(), name
    g_ref = torch.cat([p.grad.flatten() for p in ref.parameters()])
    g = torch.cat([p.grad.flatten() for p in fast.parameters()])
    assert (g - g_ref).norm() / g_ref.norm() < 0.1


@pytest.mark.parametrize("kw,call,match", [
    (dict(in_channels=1), dict(x=x_t(c=3)), r"expected 1 input channels, got 3.*in_channels = 3"),
    (dict(in_channels=1), dict(x=x_t(s=16)), r"expected 8x8 images, got 16x16.*image_size = 16"),
    (dict(in_channels=1), dict(x=torch.zeros(2, 8, 8)), r"\[B, C, H, W\]"),
    (dict(in_channels=1), dict(y=torch.tensor([0, 1])), r"unconditional.*num_classes > 0"),
    (dict(num_classes=3), dict(y=torch.tensor([0, 4])), r"\[0, 3\].*null label"),
    (dict(num_classes=3), dict(y=torch.tensor([0.0, 1.0])), r"integer class indices"),
    (dict(extra_in_channels=2), dict(), r"extra_in_channels = 2 and needs concat="),
    (dict(extra_in_channels=2), dict(concat=torch.zeros(2, 1, 8, 8)), r"concat must have shape \(2, 2, 8, 8\)"),
    (dict(), dict(concat=torch.zeros(2, 1, 8, 8)), r"extra_in_channels = 0"),
    (dict(), dict(t=torch.zeros(3)), r"timesteps t must have shape \[B\] = \[2\]"),
])
def test_bad_inputs(kw, call, match):
    m = tiny(**kw)
    args = dict(x=x_t(), t=torch.tensor([1.0, 2.0]))
    args.update(call)
    with pytest.raises(ValueError, match=match):
        m(args.pop("x"), args.pop("t"), **args)


@pytest.mark.parametrize("kw,match", [
    (dict(image_size=12, channel_mult=[1, 2, 2, 2]),
     r"image_size = 12 is not divisible by 2\*\*\(len\(channel_mult\)-1\) = 8"),
    (dict(base_channels=20), r"channels 20 .* not divisible by \[model\] norm_groups = 8"),
    (dict(base_channels=16, num_heads=3), r"num_heads = 3"),
    (dict(attention_resolutions=[5]), r"attention_resolutions \[5\] match no feature-map size"),
    (dict(channel_mult=[]), r"channel_mult"),
    (dict(dropout=1.5), r"dropout"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


def test_reference_parameter_count():
    m = UNet2D(UNet2DConfig(in_channels=3))  # base 64, mult (1, 2, 2), 2 blocks, attention at 8px
    n = sum(p.numel() for p in m.parameters())
    print(f"UNet2D reference config: {n / 1e6:.2f} M parameters")
    assert 5e6 < n < 9e6, n


def test_blocks_are_dimension_agnostic():
    emb = torch.randn(2, 32)
    for dims, shape, fmt in [(1, (2, 16, 12), None), (3, (2, 16, 4, 6, 6), torch.channels_last_3d)]:
        x = torch.randn(shape)
        if fmt is not None:
            x = x.to(memory_format=fmt)
        rb = randomize_zero_init(ResBlock(16, 24, 32, dims=dims, norm_groups=8, dropout=0.1))
        if fmt is not None:
            rb = rb.to(memory_format=fmt)
        h = rb(x, emb)
        assert h.shape == (2, 24, *shape[2:])
        attn = randomize_zero_init(SelfAttention(24, num_heads=4, norm_groups=8))
        if fmt is not None:  # attention keeps a channels_last input channels_last (no hidden copy)
            h = h.contiguous(memory_format=fmt)
            assert attn(h).is_contiguous(memory_format=fmt)
        a = attn(h)
        assert a.shape == h.shape and (a - h).abs().max() > 0
        d = Downsample(24, dims=dims)(a)
        assert d.shape == (2, 24, *[s // 2 for s in shape[2:]])
        assert Upsample(24, dims=dims, out_channels=8)(d).shape == (2, 8, *shape[2:])
        a.sum().backward()
    # attention is permutation-equivariant over tokens in any number of dims
    attn = randomize_zero_init(SelfAttention(8, num_heads=2, norm_groups=4)).eval()
    x = torch.randn(1, 8, 10)
    perm = torch.randperm(10)
    assert torch.allclose(attn(x)[..., perm], attn(x[..., perm]), atol=1e-5)
    # a DiffWave-style block: dilated 1-D convs through the conv factory, no embedding
    dil = ResBlock(8, dims=1, norm_groups=4, conv=lambda i, o: nn.Conv1d(i, o, 3, padding=4, dilation=4))
    assert dil(torch.randn(2, 8, 50)).shape == (2, 8, 50)


@pytest.mark.parametrize("dtype,shape,fmt", [
    (torch.float32, (3, 16, 6, 5), torch.channels_last),
    (torch.bfloat16, (3, 16, 6, 5), torch.channels_last),
    (torch.bfloat16, (2, 16, 3, 4, 4), torch.channels_last_3d),
    (torch.float32, (3, 16, 6, 5), torch.contiguous_format),   # PyTorch's kernel
])
@pytest.mark.parametrize("offset", [0.0, 20.0])
def test_group_norm_matches_reference(dtype, shape, fmt, offset):
    """The channels_last GroupNorm (with folded scale-shift) against fp64 F.group_norm, values and grads,
    also for inputs whose mean is far from 0 (bf16 must not lose the normalised signal to cancellation)."""
    g = torch.Generator().manual_seed(0)
    gn = GroupNorm(4, 16)
    with torch.no_grad():
        gn.weight.copy_(torch.randn(16, generator=g) * 0.3 + 1)
        gn.bias.copy_(torch.randn(16, generator=g) * 0.3)
    x = (torch.randn(shape, generator=g) * 2 + offset + torch.randn(1, 16, *[1] * (len(shape) - 2), generator=g))
    x = x.to(dtype).to(memory_format=fmt)
    scale, shift = torch.randn(shape[0], 16, generator=g) * 0.3, torch.randn(shape[0], 16, generator=g) * 0.3
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    bshape = (shape[0], 16) + (1,) * (len(shape) - 2)

    def run(fn, x):
        x = x.detach().requires_grad_()
        s, h = scale.clone().requires_grad_(), shift.clone().requires_grad_()
        gn.zero_grad()
        y = fn(x, s, h)
        (y.double() * dy).sum().backward()
        return [y.double(), x.grad.double(), gn.weight.grad.double().clone(), s.grad.double(), h.grad.double()], y

    def ref(x, s, h):
        y = F.group_norm(x.double(), 4, gn.weight.double(), gn.bias.double(), gn.eps)
        return y * (1 + s.double().reshape(bshape)) + h.double().reshape(bshape)

    want, _ = run(ref, x)
    got, y = run(gn, x)
    assert y.dtype == dtype and y.is_contiguous(memory_format=fmt)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for name, a, b in zip(["y", "dx", "dweight", "dscale", "dshift"], got, want):
        assert ((a - b).norm() / b.norm()).item() < tol, name


def test_group_norm_gradcheck_fp64():
    gn = GroupNorm(2, 4).double()
    x = (torch.randn(2, 4, 3, 5, dtype=torch.float64) + 2).to(memory_format=torch.channels_last).requires_grad_()
    s = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s, h: gn(x, s, h), (x, s, h))


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_fast_dropout(fmt):
    x = torch.randn(8, 16, 32, 32).bfloat16().to(memory_format=fmt).requires_grad_()
    torch.manual_seed(3)
    y = dropout(x, 0.1)
    assert y.dtype == x.dtype and y.is_contiguous(memory_format=fmt)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.005
    assert torch.allclose(y[kept].float(), (x[kept] / 0.9).float(), rtol=1e-2)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept].float(), torch.full((int(kept.sum()),), 1 / 0.9), rtol=1e-2)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.1), y)  # reproducible from the torch seed
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0) is x
    assert dropout(x[:, ::2], 0.5).shape == (8, 8, 32, 32)  # non-dense input: falls back to F.dropout


def test_attention_backends_agree():
    q, k, v = torch.randn(3, 2, 4, 10, 8).unbind(0)
    assert torch.allclose(attention(q, k, v, "math"), attention(q, k, v, "sdpa"), atol=1e-5)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, k, v, "flash")
