"""UNet3D (factorised space-time video U-Net) and its temporal blocks: shapes, conditioning, clip
lengths, init, joint image-video independence, the bf16 + channels_last_3d path, errors."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from helpers.denoisers import assert_starts_at_zero_then_learns
from multidiff.engine.precision import cpu_has_fast_bf16, resolve_precision
from multidiff.models.unet3d import MAX_FRAMES, UNet3D, UNet3DConfig
from multidiff.nn import TemporalAttention, TemporalConv


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.py)


TINY = dict(base_channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4], num_heads=2,
            norm_groups=8, image_size=8, frames=4, dropout=0.0)


def tiny(**kw):
    return UNet3D(UNet3DConfig(**{**TINY, **kw}))


def randomize_zero_init(model: nn.Module, scale: float = 0.1) -> nn.Module:
    """Give the zero-initialised layers (and the relative position bias) random values, so outputs
    depend on every input."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (p.ndim > 1 and not p.any()) or "rel_bias" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def clip(b=2, c=1, t=4, s=8, seed=0):
    return torch.randn(b, c, t, s, s, generator=torch.Generator().manual_seed(seed))


T2 = torch.tensor([1.0, 999.0])


@pytest.mark.parametrize("kw,cond", [
    (dict(in_channels=1), {}),
    (dict(in_channels=3, out_channels=6), {}),
    (dict(in_channels=1, num_classes=10), {"y": torch.tensor([3, 10])}),
    (dict(in_channels=1, extra_in_channels=2), {"concat": torch.randn(2, 2, 4, 8, 8)}),
    (dict(in_channels=3, temporal_attention=False, temporal_conv=False, scale_shift_norm=False), {}),
    (dict(in_channels=1, channel_mult=[1, 2, 2], image_size=16, attention_resolutions=[8, 4]), {}),
])
def test_output_shape(kw, cond):
    m = tiny(**kw)
    x = clip(c=kw["in_channels"], s=kw.get("image_size", 8))
    out = m(x, T2, **cond)
    want_c = kw.get("out_channels") or kw["in_channels"]
    assert out.shape == (2, want_c, *x.shape[2:]) and out.dtype == x.dtype and out.is_contiguous()


def test_structure_follows_the_paper():
    """(1,3,3) spatial convs, residual (3,1,1) temporal convs, temporal attention right after each
    spatial attention, nothing that mixes time where the config turns it off."""
    m = tiny()
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv3d)]
    assert {c.kernel_size for c in convs} == {(1, 3, 3), (1, 1, 1), (3, 1, 1)}
    n_attn = sum(isinstance(mod, nn.Module) and type(mod).__name__ == "SelfAttention" for mod in m.modules())
    n_tattn = sum(isinstance(mod, TemporalAttention) for mod in m.modules())
    assert n_attn == n_tattn == 1 + 1 + 2  # down at 4px, middle, up at 4px (2 blocks)
    flat = tiny(temporal_attention=False, temporal_conv=False)
    assert not any(isinstance(mod, (TemporalAttention, TemporalConv)) for mod in flat.modules())
    assert all(c.kernel_size[0] == 1 for c in flat.modules() if isinstance(c, nn.Conv3d))


def test_zero_init_output_then_learns():
    torch.manual_seed(0)
    m = tiny()
    x, t = clip(b=2), torch.tensor([10.0, 500.5])
    assert_starts_at_zero_then_learns(m, x, t, steps=25)
    # the temporal layers learn too (they start as identity: zero conv / zero projection)
    for mod in m.modules():
        if isinstance(mod, TemporalConv):
            assert mod.conv.weight.abs().max() > 0
        if isinstance(mod, TemporalAttention):
            assert mod.proj.weight.abs().max() > 0


def test_fractional_timesteps():
    m = randomize_zero_init(tiny()).eval()
    x = clip()
    a = m(x, torch.tensor([10.0, 10.0]))
    b = m(x, torch.tensor([10.5, 10.5]))
    assert (a - b).abs().max() > 1e-4
    assert torch.equal(m(x, torch.tensor(10.0)), a)  # a scalar t is broadcast over the batch
    assert torch.equal(m(x, torch.tensor([10, 10])), a)  # integer t is fine too


@pytest.mark.parametrize("frames", [1, 3, 4, 9])
def test_clip_lengths_other_than_training(frames):
    """Trained on 4 frames: 1 frame, fewer, and more than twice as many (offsets beyond the trained
    range reuse the last relative bias) all run, and the frames interact."""
    m = randomize_zero_init(tiny(frames=4)).eval()
    x = clip(t=frames)
    out = m(x, T2)
    assert out.shape == x.shape and torch.isfinite(out).all()
    if frames > 1:
        x2 = x.clone()
        x2[:, :, 0] += 1.0
        assert (m(x2, T2)[:, :, -1] - out[:, :, -1]).abs().max() > 1e-5  # the last frame sees the first


def test_class_conditioning_and_null_label():
    m = randomize_zero_init(tiny(num_classes=5, class_dropout=1.0))
    assert m.null_label == 5 and tiny().null_label == -1
    x, t, y = clip(), torch.tensor([50.0, 50.0]), torch.tensor([1, 3])
    m.eval()
    out_y, out_null = m(x, t, y=y), m(x, t, y=torch.full((2,), 5))
    assert (out_y - out_null).abs().max() > 1e-4
    assert torch.equal(m(x, t), out_null)  # y=None means the null label
    m.train()  # class_dropout = 1: every label is replaced by the null label
    assert torch.allclose(m(x, t, y=y), out_null)


def test_extra_input_channels_are_used():
    m = randomize_zero_init(tiny(extra_in_channels=2)).eval()
    c1, c2 = torch.zeros(2, 2, 4, 8, 8), torch.ones(2, 2, 4, 8, 8)
    assert (m(clip(), T2, concat=c1) - m(clip(), T2, concat=c2)).abs().max() > 1e-4


@pytest.mark.parametrize("fast", [False, True])
def test_joint_image_video_independent_frames(fast):
    """Frames marked independent (images appended to a clip) neither see nor are seen by the others:
    their output is that of the frame run alone, whatever the other frames hold."""
    m = randomize_zero_init(tiny(num_classes=3, class_dropout=0.0)).eval()
    x, t, y = clip(t=6), torch.tensor([20.0, 700.0]), torch.tensor([0, 2])
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 4:] = True   # frames 4, 5: independent images
    mask[1, 1] = True    # one in the middle of the second clip as well
    ctx = torch.autocast("cpu", torch.bfloat16) if fast else torch.autocast("cpu", enabled=False)
    if fast:
        m = m.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    tol = 2e-2 if fast else 1e-5
    with torch.no_grad(), ctx:
        out = m(x, t, y=y, frame_mask=mask)
        x2 = x.clone()
        x2[:, :, :4] = clip(t=4, seed=5)       # new video frames
        x2[1, :, 2:4] = clip(b=1, t=2, seed=6)
        x2[1, :, 1] = x[1, :, 1]               # keep the independent frame of clip 1
        out2 = m(x2, t, y=y, frame_mask=mask)
        for b, i in [(0, 4), (0, 5), (1, 4), (1, 5), (1, 1)]:
            assert (out[b, :, i] - out2[b, :, i]).abs().max() <= tol * max(1.0, out[b, :, i].abs().max()), (b, i)
            alone = m(x[b:b + 1, :, i:i + 1], t[b:b + 1], y=y[b:b + 1], frame_mask=torch.ones(1, 1, dtype=torch.bool))
            assert (alone[0, :, 0] - out[b, :, i]).abs().max() <= tol * max(1.0, alone.abs().max()), (b, i)
        # changing an independent frame leaves the video frames alone
        x3 = x.clone()
        x3[:, :, 4:] += 3.0
        x3[1, :, 1] -= 3.0
        out3 = m(x3, t, y=y, frame_mask=mask)
        video = ~mask
        assert ((out3 - out).abs().amax(dim=(1, 3, 4))[video] <= tol * out.abs().max()).all()
        # without the mask the same frames do mix (the test above is not vacuous)
        a, b = m(x, t, y=y), m(x2, t, y=y)
        assert (a[:, :, 4:] - b[:, :, 4:]).abs().max() > 10 * tol
        # an all-False mask is the same as none
        assert torch.equal(m(x, t, y=y, frame_mask=torch.zeros(2, 6, dtype=torch.bool)), a)
    # and in training: an independent frame's output has zero gradient wrt every other frame (finite grads)
    xg = x.clone().requires_grad_()
    with ctx:
        m(xg, t, y=y, frame_mask=mask)[0, :, 4].float().sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad[0, :, 4].abs().max() > 0
    assert xg.grad[0, :, :4].abs().max() == 0 and xg.grad[0, :, 5].abs().max() == 0 and xg.grad[1].abs().max() == 0


class _LayoutSpy(TorchDispatchMode):
    """Records every op that materialises a feature map [N, C, D, S, S] (C > 1) in NCDHW order."""

    def __init__(self, sizes):
        super().__init__()
        self.sizes, self.bad = sizes, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # views copy nothing
            return out
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and o.ndim == 5 and o.shape[1] > 1 and o.shape[3] == o.shape[4] \
                    and o.shape[4] in self.sizes and o.is_contiguous() \
                    and not o.is_contiguous(memory_format=torch.channels_last_3d):
                self.bad.append((str(func), tuple(o.shape)))
        return out


@pytest.mark.parametrize("channels", [3, 1])  # 1 channel: the input's layout is ambiguous, the model's is not
def test_channels_last_3d_bf16_matches_fp32_without_layout_copies(channels):
    kw = dict(in_channels=channels, num_classes=4, channel_mult=[1, 2], attention_resolutions=[8, 4],
              class_dropout=0.0)
    ref = randomize_zero_init(tiny(**kw))
    fast = tiny(**kw)
    fast.load_state_dict(ref.state_dict())
    if channels == 3:
        fast = fast.to(memory_format=torch.channels_last_3d)
    else:  # .contiguous() leaves a weight with 1 input channel in its NCDHW strides (it already "is" CL3d)
        for p in fast.parameters():
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d) if p.ndim == 5 else p.data
        assert fast.input_conv.weight.is_contiguous()
    x, t, y = clip(c=channels, t=3), torch.tensor([3.0, 600.5]), torch.tensor([0, 4])  # 3 frames: no 4x4 scores
    w = torch.randn(2, channels, 3, 8, 8).contiguous(memory_format=torch.channels_last_3d)  # a loss gradient
    out_ref = ref(x, t, y=y)
    (out_ref * w).sum().backward()
    spy = _LayoutSpy((8, 4))
    with torch.autocast("cpu", torch.bfloat16), spy:
        out = fast(x.contiguous(memory_format=torch.channels_last_3d), t, y=y)
        loss = (out.float() * w).sum()
    with spy:
        loss.backward()
    if cpu_has_fast_bf16():
        assert spy.bad == [], f"ops that produced non-channels_last_3d activations: {spy.bad[:5]}"
        assert out.is_contiguous(memory_format=torch.channels_last_3d)
    else:
        # without AVX512-BF16 / AMX (e.g. an EPYC Zen 3) torch's CPU kernels write NCDHW maps here (bf16 conv3d;
        # in fp32 too, group norm and views of 1-frame maps): the layout is torch's there, not ours, and `auto`
        # runs fp32 (the numbers below are still checked)
        assert not resolve_precision("auto", torch.device("cpu"))
    assert out.dtype == torch.float32
    assert (out - out_ref).norm() / out_ref.norm() < 0.05
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        assert q.grad is not None and q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all(), name
    g_ref = torch.cat([p.grad.flatten() for p in ref.parameters()])
    g = torch.cat([p.grad.flatten() for p in fast.parameters()])
    assert (g - g_ref).norm() / g_ref.norm() < 0.1


def test_to_channels_last_means_channels_last_3d():
    """An image trainer calls model.to(memory_format=torch.channels_last); every weight here is 5-D."""
    m = tiny()
    assert m.to(memory_format=torch.channels_last) is m
    convs = [mod.weight for mod in m.modules() if isinstance(mod, nn.Conv3d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convs)
    assert not all(w.is_contiguous() for w in convs)
    m.to(torch.float64, memory_format=torch.channels_last)
    assert all(p.dtype == torch.float64 for p in m.parameters())


def test_temporal_conv_is_a_residual_conv_over_time():
    tc = randomize_zero_init(TemporalConv(8), scale=0.3)
    B, T = 2, 5
    x = torch.randn(B * T, 8, 1, 3, 3)
    clipped = x.reshape(B, T, 8, 3, 3).transpose(1, 2)                          # [B, C, T, H, W]
    want = clipped + F.conv3d(clipped, tc.conv.weight, tc.conv.bias, padding=(1, 0, 0))
    assert torch.allclose(tc(x, T), want.transpose(1, 2).reshape(x.shape), atol=1e-5)
    ind = torch.tensor([[False, False, True, False, False], [True, False, False, False, False]])
    got = tc(x, T, ind).reshape(B, T, 8, 3, 3)
    keep = (~ind)[:, None, :, None, None].float()
    ref = clipped + keep * F.conv3d(clipped * keep, tc.conv.weight, tc.conv.bias, padding=(1, 0, 0))
    assert torch.allclose(got, ref.transpose(1, 2), atol=1e-5)
    assert torch.equal(got[0, 2], x.reshape(B, T, 8, 3, 3)[0, 2])                # independent frame: unchanged


def test_temporal_attention_matches_reference():
    torch.manual_seed(0)
    ta = randomize_zero_init(TemporalAttention(8, num_heads=2, norm_groups=4, max_distance=2), scale=0.5)
    B, T, S = 2, 5, 3
    x = torch.randn(B * T, 8, S, S)
    ind = torch.tensor([[False, False, False, False, True], [False, True, False, False, False]])
    for mask in (None, ind):
        h = F.group_norm(x, 4, ta.norm.weight, ta.norm.bias, ta.norm.eps)
        tok = h.reshape(B, T, 8, S * S).permute(0, 3, 1, 2)                       # [B, N, T, C]
        q, k, v = ta.qkv(tok).chunk(3, -1)
        q, k, v = (z.unflatten(-1, (2, 4)).transpose(-2, -3) for z in (q, k, v))  # [B, N, heads, T, d]
        s = q @ k.transpose(-1, -2) / 2.0
        off = (torch.arange(T)[None] - torch.arange(T)[:, None]).clamp(-2, 2) + 2
        s = s + ta.rel_bias[:, off][None, None]
        if mask is not None:
            ok = (~mask[:, :, None] & ~mask[:, None, :]) | torch.eye(T, dtype=torch.bool)
            s = s.masked_fill(~ok[:, None, None], float("-inf"))
        o = (s.softmax(-1) @ v).transpose(-2, -3).flatten(-2)                    # [B, N, T, C]
        want = x + ta.proj(o).permute(0, 2, 3, 1).reshape(x.shape)
        assert torch.allclose(ta(x, T, mask), want, atol=1e-5)
    # the bias depends on the offset only, clipped at max_distance
    bias = ta.bias(7)[0]
    assert torch.equal(bias[:, 0, 3], bias[:, 2, 5]) and torch.equal(bias[:, 0, 6], bias[:, 0, 2])
    assert not torch.equal(bias[:, 0, 1], bias[:, 1, 0])


def test_deepcopy_keeps_copies_independent():
    """EMA copies the model: the copy's factorised convs must follow the copy's clip length."""
    m = randomize_zero_init(tiny()).eval()
    ema = copy.deepcopy(m)
    x4, x6 = clip(t=4), clip(t=6)
    assert torch.equal(ema(x6, T2), m(x6, T2))
    assert torch.equal(m(x4, T2), ema(x4, T2))


@pytest.mark.parametrize("kw,call,match", [
    (dict(), dict(x=clip(c=3)), r"expected 1 input channels, got 3.*in_channels = 3"),
    (dict(), dict(x=clip(s=16)), r"expected 8x8 frames, got 16x16.*image_size = 16"),
    (dict(), dict(x=torch.zeros(2, 1, 8, 8)), r"\[B, C, T, H, W\].*unsqueeze\(2\)"),
    (dict(), dict(x=torch.zeros(1, 1, MAX_FRAMES + 1, 8, 8), t=torch.zeros(1)), r"1 to 1024 frames, got T = 1025"),
    (dict(), dict(y=torch.tensor([0, 1])), r"unconditional.*num_classes > 0"),
    (dict(num_classes=3), dict(y=torch.tensor([0, 4])), r"\[0, 3\].*null label"),
    (dict(extra_in_channels=2), dict(), r"extra_in_channels = 2 and needs concat= of shape \(2, 2, 4, 8, 8\)"),
    (dict(extra_in_channels=2), dict(concat=torch.zeros(2, 2, 3, 8, 8)), r"concat must have shape \(2, 2, 4, 8, 8\)"),
    (dict(), dict(concat=torch.zeros(2, 1, 4, 8, 8)), r"extra_in_channels = 0"),
    (dict(), dict(t=torch.zeros(3)), r"timesteps t must have shape \[B\] = \[2\]"),
    (dict(), dict(frame_mask=torch.zeros(2, 5, dtype=torch.bool)), r"frame_mask .* \[B, T\] = \[2, 4\]"),
    (dict(), dict(frame_mask=torch.zeros(2, 4)), r"frame_mask must be a bool tensor"),
])
def test_bad_inputs(kw, call, match):
    m = tiny(**kw)
    args = dict(x=clip(), t=T2)
    args.update(call)
    with pytest.raises(ValueError, match=match):
        m(args.pop("x"), args.pop("t"), **args)


@pytest.mark.parametrize("kw,match", [
    (dict(image_size=12, channel_mult=[1, 2, 2, 2]), r"image_size = 12 is not divisible by 2\*\*\(len"),
    (dict(base_channels=20), r"channels 20 .* not divisible by \[model\] norm_groups = 8"),
    (dict(num_heads=3), r"num_heads = 3"),
    (dict(attention_resolutions=[5]), r"attention_resolutions \[5\] match no feature-map size"),
    (dict(frames=0), r"frames must be positive"),
    (dict(frames=MAX_FRAMES + 1), r"frames = 1025"),
    (dict(dropout=1.5), r"dropout"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


def test_reference_parameter_count():
    m = UNet3D(UNet3DConfig())  # base 32, mult (1, 2, 2), 2 blocks, attention at 8px, 16 frames
    n = sum(p.numel() for p in m.parameters())
    print(f"UNet3D default config: {n / 1e6:.2f} M parameters")
    assert 1.5e6 < n < 3e6, n
