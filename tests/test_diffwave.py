"""DiffWave: shapes, conditioning, fractional t, init, lmnt-com/diffwave equivalence, safe loading, errors."""
import math
import os

import pytest
import torch

from multidiff.core import Denoiser, Schedule, sample
from multidiff.models.diffwave import (BASE, LARGE, UNCONDITIONAL, DiffWave, DiffWaveConfig, SpectrogramUpsampler,
                                       derive_upsample_strides, load_lmnt_checkpoint)

import diffwave.model as lmnt_model  # noqa: E402  (the `bench` extra; CI installs it)
import diffwave.params as lmnt_params  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.py)


TINY = dict(residual_channels=8, residual_layers=4, dilation_cycle=2, n_mels=6, hop_length=16)


def randomize(model: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
    """Perturb every weight (the zero-initialised output conv included) so outputs depend on all of them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def both_paths(model, *args, **kw):
    """The module path (what training runs) and the repacked no-grad path."""
    with torch.no_grad():
        fast = model(*args, **kw)
        model.fast = False
        try:
            slow = model(*args, **kw)
        finally:
            model.fast = True
    return fast, slow


def lmnt_params_dict(**kw):
    return lmnt_params.AttrDict({**lmnt_params.params, **kw})


# ---- shapes and conditioning ----------------------------------------------------------------
@pytest.mark.parametrize("preset,L,n_mels", [(BASE, 512, 80), (LARGE, 256, 80), (UNCONDITIONAL, 200, 0)])
def test_presets_shapes(preset, L, n_mels):
    cfg = DiffWaveConfig(**preset)
    assert cfg.n_mels == n_mels
    m = randomize(DiffWave(cfg))
    mel = rand(1, n_mels, L // 256, seed=1) if n_mels else None
    with torch.no_grad():
        out = m(rand(1, 1, L), torch.tensor([7.0]), mel=mel)
    assert out.shape == (1, 1, L) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("hop,strides", [(256, [16, 16]), (300, [15, 20]), (16, [4, 4]), (7, [7]), (1, []),
                                         (2048, [8, 16, 16]), (441, [21, 21])])
def test_derived_strides(hop, strides):
    assert derive_upsample_strides(hop) == strides
    assert math.prod(strides) == hop


@pytest.mark.parametrize("hop,explicit", [(300, []), (16, []), (15, []), (12, [3, 2, 2]), (7, [])])
def test_non_256_hops_give_exact_lengths(hop, explicit):
    m = randomize(DiffWave(**{**TINY, "hop_length": hop, "upsample_strides": explicit}))
    frames = 3
    mel = rand(2, 6, frames, seed=1)
    up = m.spectrogram_upsampler(mel)
    assert up.shape == (2, 6, frames * hop)
    fast, slow = both_paths(m, rand(2, 1, frames * hop), torch.tensor([3.0, 11.5]), mel=mel)
    assert fast.shape == (2, 1, frames * hop)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)


def test_class_conditional():
    m = randomize(DiffWave(**TINY, num_classes=3))
    x, t, mel = rand(2, 1, 64), torch.tensor([5.0, 5.0]), rand(2, 6, 4, seed=1)
    with torch.no_grad():
        a = m(x, t, mel=mel, y=torch.tensor([0, 1]))
        b = m(x, t, mel=mel, y=torch.tensor([2, 1]))
        null = m(x, t, mel=mel)
        null2 = m(x, t, mel=mel, y=torch.full((2,), m.null_label))
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
    torch.testing.assert_close(null, null2)
    fast, slow = both_paths(m, x, t, mel=mel, y=torch.tensor([0, 2]))
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)


def test_class_dropout_trains_the_null_label_only_in_training():
    """Guidance needs an unconditional model inside the conditional one: in training, a share
    class_dropout of the labels is replaced by the null label (1.0: all of them); in eval, never."""
    m = randomize(DiffWave(**{**TINY, "n_mels": 0, "num_classes": 3, "class_dropout": 1.0}))
    x, t, y = rand(2, 1, 32), torch.tensor([3.0, 9.0]), torch.tensor([0, 2])
    with torch.no_grad():
        null, labelled = m(x, t), m(x, t, y=y)
        m.train()
        dropped = m(x, t, y=y)
    torch.testing.assert_close(dropped, null)
    assert not torch.allclose(labelled, null)
    m.cfg.class_dropout = 0.5
    torch.manual_seed(0)
    with torch.no_grad():
        outs = m(x[:1].expand(200, 1, 32), t[:1].expand(200), y=torch.ones(200, dtype=torch.long))
    is_null = (outs - null[:1]).flatten(1).abs().amax(1) < 1e-6
    assert 70 <= int(is_null.sum()) <= 130  # Binomial(200, 0.5)
    with pytest.raises(ValueError, match="class_dropout"):
        DiffWave(**{**TINY, "num_classes": 3, "class_dropout": 1.5})


@pytest.mark.parametrize("n_mels", [6, 0])
def test_fast_path_folds_the_step_embedding_into_the_gemm_exactly(n_mels):
    """One waveform, conditioner not cached: the bias and the step embedding ride in each layer's GEMM
    (conv(h + e) = conv(h) + conv(e) with zero padding fixed up within d of both ends). Dilations 1..32 on
    32 samples, so some layers' taps reach past both ends everywhere (d >= L); then the cached conditioner
    (the mel's third call) and a batch of two, which keep h = u + e."""
    m = randomize(DiffWave(**{**TINY, "residual_layers": 6, "dilation_cycle": 6, "n_mels": n_mels}))
    x, mel = rand(1, 1, 32), (rand(1, 6, 2, seed=1) if n_mels else None)
    for call in range(3):  # the third call of a mel uses the cached conditioner
        fast, slow = both_paths(m, x, torch.tensor([4.5]), mel=mel)
        torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5, msg=f"call {call + 1}")
    x2, mel2 = rand(2, 1, 32, seed=2), (rand(2, 6, 2, seed=3) if n_mels else None)
    fast, slow = both_paths(m, x2, torch.tensor([4.5, 20.0]), mel=mel2)
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)


def test_zero_init_output_and_lmnt_init():
    m = DiffWave(**TINY).eval()
    assert not m.output_projection.weight.any()
    fast, slow = both_paths(m, rand(1, 1, 64), torch.tensor([3.0]), mel=rand(1, 6, 4))
    # only the output conv's bias is left: a constant
    assert torch.allclose(fast, m.output_projection.bias.expand_as(fast))
    assert torch.equal(slow, slow.flatten()[0].expand_as(slow))


# ---- fractional timesteps -------------------------------------------------------------------
def test_fractional_t_interpolates_the_table_like_lmnt():
    m = randomize(DiffWave(**TINY))
    emb = m.diffusion_embedding
    table = emb.embedding
    want = emb.projection1(table[2] + 0.25 * (table[3] - table[2]))
    want = torch.nn.functional.silu(emb.projection2(torch.nn.functional.silu(want)))
    torch.testing.assert_close(emb(torch.tensor([2.25])), want[None])
    torch.testing.assert_close(emb(torch.tensor([4.0])), emb(torch.tensor([4])))  # float == integer lookup
    # per-sample fractional t in one batch == one call each (lmnt's lerp only broadcasts for B = 1)
    x, mel = rand(3, 1, 64), rand(3, 6, 4, seed=1)
    t = torch.tensor([0.3, 17.75, 49.0])
    with torch.no_grad():
        batched = m(x, t, mel=mel)
        single = torch.cat([m(x[i:i + 1], t[i:i + 1], mel=mel[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        a, b, mid = (m(x[:1], torch.tensor([v]), mel=mel[:1]) for v in (17.0, 18.0, 17.5))
    assert not torch.allclose(a, b) and not torch.allclose(mid, a)


# ---- lmnt-com/diffwave equivalence --------------------------------------------------------------
def lmnt_checkpoint(path, ref, params):
    """lmnt's learner.state_dict() layout, written with torch.save like its save_to_checkpoint."""
    torch.save({"step": 1234, "model": ref.state_dict(),
                "optimizer": torch.optim.Adam(ref.parameters(), lr=2e-4).state_dict(),
                "params": params, "scaler": {"scale": 65536.0, "growth_factor": 2.0}}, path)


@pytest.mark.parametrize("as_attrdict", [True, False])
def test_lmnt_equivalence_default_params(tmp_path, as_attrdict):
    params = lmnt_params_dict()
    ref = randomize(lmnt_model.DiffWave(params), scale=0.02)
    path = tmp_path / "weights-1234.pt"
    lmnt_checkpoint(path, ref, params if as_attrdict else dict(params))
    ours = load_lmnt_checkpoint(path)
    assert ours.cfg == DiffWaveConfig(**BASE)
    frames = 4
    audio, mel = rand(2, 256 * frames) * 0.5, torch.rand(2, 80, frames, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(audio, mel, torch.tensor([3, 41]))          # integer steps: lmnt's table lookup
        want_frac = ref(audio[:1], mel[:1], torch.tensor([22.9925]))  # fractional: lmnt's _lerp (B = 1 only)
    for got in both_paths(ours, audio[:, None], torch.tensor([3.0, 41.0]), mel=mel):
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-4)
    for got in both_paths(ours, audio[:1, None], torch.tensor([22.9925]), mel=mel[:1]):
        torch.testing.assert_close(got, want_frac, atol=2e-6, rtol=1e-4)
    # the directory form, as lmnt's inference.py takes it
    os.replace(path, tmp_path / "weights.pt")
    assert load_lmnt_checkpoint(tmp_path).cfg == ours.cfg


def test_lmnt_equivalence_unconditional(tmp_path):
    """lmnt's master branch drops the upsampler and conditioners when params.unconditional; the PyPI
    model with zeroed conditioners computes the same function."""
    params = lmnt_params_dict(residual_layers=12, residual_channels=32, dilation_cycle_length=6)
    ref = randomize(lmnt_model.DiffWave(params), scale=0.02)
    with torch.no_grad():
        for layer in ref.residual_layers:
            layer.conditioner_projection.weight.zero_()
            layer.conditioner_projection.bias.zero_()
    state = {k: v for k, v in ref.state_dict().items() if "conditioner" not in k and "upsampler" not in k}
    torch.save({"step": 1, "model": state, "params": {**params, "unconditional": True}}, tmp_path / "u.pt")
    ours = load_lmnt_checkpoint(tmp_path / "u.pt")
    assert ours.cfg.n_mels == 0 and ours.cfg.dilation_cycle == 6 and ours.spectrogram_upsampler is None
    audio = rand(1, 1000) * 0.5
    with torch.no_grad():
        want = ref(audio[:, :768], torch.zeros(1, 80, 3), torch.tensor([30]))
    for got in both_paths(ours, audio[:, None, :768], torch.tensor([30.0])):
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-4)
    with torch.no_grad():  # any length when unconditional
        assert ours(audio[:, None], torch.tensor([2.5])).shape == (1, 1, 1000)


@pytest.mark.parametrize("strides", [[16, 16], [15, 20], [7], [3, 2, 2]])
def test_upsampler_gemm_equals_the_transposed_convs(strides):
    """The upsampler runs as a GEMM + overlap-add; its parameters are still ConvTranspose2d's, and it
    computes what those modules compute (float64, random weights, even and odd strides)."""
    up = randomize(SpectrogramUpsampler(strides, init="lmnt"), scale=0.1).double()
    mel = rand(2, 6, 5, seed=3).double()
    x = mel.unsqueeze(1)
    for i in range(len(strides)):
        x = torch.nn.functional.leaky_relu(getattr(up, f"conv{i + 1}")(x), 0.4)
    torch.testing.assert_close(up(mel), x.squeeze(1), atol=1e-12, rtol=1e-10)


def test_upsampler_for_hop_256_is_lmnts():
    ref = lmnt_model.SpectrogramUpsampler(80)
    ours = SpectrogramUpsampler(derive_upsample_strides(256))
    for name in ("conv1", "conv2"):
        a, b = getattr(ref, name), getattr(ours, name)
        want = ((3, 32), (1, 16), (1, 8))
        assert (a.kernel_size, a.stride, a.padding) == (b.kernel_size, b.stride, b.padding) == want
    ours.load_state_dict(ref.state_dict())
    mel = rand(2, 80, 7)
    with torch.no_grad():
        assert torch.equal(ours(mel), ref(mel))


@pytest.mark.parametrize("strides", [[16, 16], [15, 20], [4, 4], [7]])
def test_upsampler_starts_as_linear_interpolation(strides):
    """The default init passes the mel itself: linear interpolation reproduces constants and ramps
    exactly (away from the two edge half-frames), so every layer's conditioner sees the mel from step 1."""
    up, hop = SpectrogramUpsampler(strides), math.prod(strides)
    frames = 9
    centre = torch.arange(frames * hop, dtype=torch.float64) / hop - (hop - 1) / (2 * hop)  # in frame units
    inner = slice(hop, (frames - 1) * hop)  # a full frame in from each edge
    ramp = 0.2 + 0.05 * torch.arange(frames)  # positive, like lmnt's mels in [0, 1]
    mel = torch.stack([torch.full((frames,), 0.7), ramp])[None].float()  # [1, 2 bins, frames]
    with torch.no_grad():
        out = up(mel)[0].double()
    torch.testing.assert_close(out[0, inner], torch.full_like(out[0, inner], 0.7), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1, inner], 0.2 + 0.05 * centre[inner], atol=1e-6, rtol=0)
    # PyTorch's default init (what lmnt trains from) scales the mel down by orders of magnitude
    speech_like = torch.rand(1, 80, frames, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        passed = SpectrogramUpsampler(strides)(speech_like)[..., inner].std()
        lmnt = SpectrogramUpsampler(strides, init="lmnt")(speech_like)[..., inner].std()
    assert passed > 0.2 and lmnt < passed / 4


def test_bf16_path_is_as_accurate_as_autocast_on_the_module_path():
    m = randomize(DiffWave(**{**TINY, "residual_layers": 10, "residual_channels": 16, "dilation_cycle": 5}))
    x, t, mel = rand(2, 1, 256) * 0.5, torch.tensor([4.0, 30.5]), rand(2, 6, 16, seed=1)
    with torch.no_grad():
        ref = m(x, t, mel=mel)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast, slow = both_paths(m, x, t, mel=mel)
    assert fast.dtype == torch.float32
    err = lambda y: ((y.float() - ref).norm() / ref.norm()).item()
    # documented tolerance: the fast bf16 path stays within 1.5x of autocast's own error (and below 3%)
    assert err(fast) < max(1.5 * err(slow), 1e-3) and err(fast) < 0.03


# ---- the training path (hand-written backward) -------------------------------------------------
def forward_backward(model, x, t, mel=None, y=None, seed=5):
    """Output and the gradients of a fixed random projection of it w.r.t. x, mel and every parameter."""
    model.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    mel = None if mel is None else mel.detach().clone().requires_grad_(True)
    out = model(x, t, mel=mel, y=y)
    (out * rand(*out.shape, seed=seed).to(out.dtype)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), x.grad, None if mel is None else mel.grad, grads


@pytest.mark.parametrize("kw,L", [(TINY, 64), ({**TINY, "n_mels": 0, "num_classes": 3, "class_dropout": 0.0}, 64),
                                  ({**TINY, "dilation_cycle": 6, "residual_layers": 6}, 32)])
def test_training_path_gradients_equal_the_module_path(kw, L):
    """float64: the hand-written backward is autograd's on the module path to rounding (every
    parameter, the audio and the mel), including a dilation as long as the clip (2**5 = 32 samples)."""
    m = randomize(DiffWave(**kw), scale=0.1).double().train()
    B = 3
    x, t = rand(B, 1, L).double(), torch.tensor([1.5, 7.0, 20.0])
    mel = rand(B, kw["n_mels"], L // kw["hop_length"], seed=1).double() if kw["n_mels"] else None
    y = torch.tensor([0, 3, 1]) if kw.get("num_classes") else None
    fast = forward_backward(m, x, t, mel, y)
    m.fast = False
    slow = forward_backward(m, x, t, mel, y)
    for a, b in zip(fast[:3], slow[:3]):
        if b is not None:
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    for name in slow[3]:
        torch.testing.assert_close(fast[3][name], slow[3][name], atol=1e-12, rtol=1e-10, msg=name)


def test_training_path_gradients_equal_lmnts_autograd():
    """fp32, BASE-shaped layers: the gradients our training step uses are the ones lmnt-com/diffwave's
    own model gives (same weights, same input)."""
    params = lmnt_params_dict(residual_layers=6, dilation_cycle_length=3)
    ref = randomize(lmnt_model.DiffWave(params), scale=0.02).train()
    ours = DiffWave(**{**BASE, "residual_layers": 6, "dilation_cycle": 3}, upsampler_init="lmnt").train()
    ours.load_state_dict(ref.state_dict())
    frames = 3
    audio, mel = rand(2, 256 * frames) * 0.5, torch.rand(2, 80, frames, generator=torch.Generator().manual_seed(1))
    steps = torch.tensor([3, 41])
    w = rand(2, 1, 256 * frames, seed=5)
    (ref(audio, mel, steps) * w).sum().backward()
    _, _, _, grads = forward_backward(ours, audio[:, None], steps.float(), mel)
    for name, p in ref.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-3, msg=name)


def test_training_path_bf16_gradients_are_as_accurate_as_autocast_on_the_module_path():
    m = randomize(DiffWave(**{**TINY, "residual_layers": 10, "residual_channels": 16, "dilation_cycle": 5})).train()
    x, t, mel = rand(2, 1, 256) * 0.5, torch.tensor([4.0, 30.5]), rand(2, 6, 16, seed=1)
    ref = forward_backward(m, x, t, mel)[3]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = forward_backward(m, x, t, mel)[3]
        m.fast = False
        slow = forward_backward(m, x, t, mel)[3]
    flat = lambda g: torch.cat([v.flatten().float() for v in g.values()])
    err = lambda g: ((flat(g) - flat(ref)).norm() / flat(ref).norm()).item()
    assert err(fast) < max(1.5 * err(slow), 1e-3) and err(fast) < 0.05


# ---- the fast path's caches ----------------------------------------------------------------------
def test_fast_path_follows_weight_and_mel_changes():
    m = randomize(DiffWave(**TINY))
    x, t = rand(1, 1, 64), torch.tensor([9.0])
    mel = rand(1, 6, 4, seed=1)
    with torch.no_grad():
        a = m(x, t, mel=mel)
        mel.mul_(2)                      # in place: the cached conditioner must not be reused
        b = m(x, t, mel=mel)
        m.fast = False
        want_b = m(x, t, mel=mel)
        m.fast = True
        m.residual_layers[1].conditioner_projection.weight.add_(0.1)   # e.g. an optimizer step
        c = m(x, t, mel=mel)
        m.fast = False
        want_c = m(x, t, mel=mel)
        m.fast = True
        d = m(x, t, mel=rand(1, 6, 4, seed=7))   # a new tensor: a new conditioner
    torch.testing.assert_close(b, want_b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(c, want_c, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(a, b) and not torch.allclose(c, d)
    m.cond_cache_mb = 0                   # too big to cache: the mel rides in the GEMM
    with torch.no_grad():
        torch.testing.assert_close(m(x, t, mel=mel), want_c, atol=1e-6, rtol=1e-5)


def test_the_conditioner_is_cached_from_a_mels_third_call_on():
    """A mel's first two calls (all of a 1- or 2-step student's) ride along in the GEMM; from its third call
    the conditioner term is computed once and reused; either way the output is the module path's."""
    m = randomize(DiffWave(**TINY))
    x, t, mel = rand(1, 1, 64), torch.tensor([9.0]), rand(1, 6, 4, seed=1)
    m.fast = False
    with torch.no_grad():
        want = m(x, t, mel=mel)
    m.fast = True
    with torch.no_grad():
        for call in range(4):
            torch.testing.assert_close(m(x, t, mel=mel), want, atol=1e-6, rtol=1e-5)
            assert len(m._cond_cache) == (0 if call < 2 else 1), call


def test_gradients_flow_and_denoiser_contract():
    m = randomize(DiffWave(**TINY)).train()
    x, mel = rand(2, 1, 64), rand(2, 6, 4, seed=1)
    out = m(x, torch.tensor([1.5, 40.0]), mel=mel)
    out.square().mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    sched = Schedule.from_betas(torch.linspace(1e-4, 0.05, 50))
    den = Denoiser(m.eval(), sched, "eps")
    with torch.no_grad():
        est = den.vp(x, 12.25, 0.5, mel=mel)
    assert est.x0.shape == x.shape
    # lmnt's 6-step fast schedule through the core sampler: fractional timesteps paired with sigmas
    betas = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5]
    ac = torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), 0)
    audio = sample(den, rand(2, 1, 64, seed=3), "ddpm", timesteps=sched.align_betas(betas).flip(0),
                   sigmas=((1 - ac) / ac).sqrt().flip(0), variance="posterior", cond={"mel": mel})
    assert audio.shape == (2, 1, 64) and torch.isfinite(audio).all()


# ---- loading safely --------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    ref = lmnt_model.DiffWave(lmnt_params_dict(residual_layers=2))
    torch.save({"step": 1, "model": ref.state_dict(), "params": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refusing to load .*evil.pt"):
        load_lmnt_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_plain_state_dict_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    m = randomize(DiffWave(**{**TINY, "hop_length": 300}))
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    save_file(m.state_dict(), tmp_path / "w.safetensors")
    x, t, mel = rand(1, 1, 600), torch.tensor([7.5]), rand(1, 6, 2, seed=1)
    with torch.no_grad():
        want = m(x, t, mel=mel)
        for f in ("sd.pt", "w.safetensors"):
            # a plain state dict has no params: the dilation cycle can't be read from the shapes
            got = load_lmnt_checkpoint(tmp_path / f, dilation_cycle=2)
            assert got.cfg.hop_length == 300 and got.spectrogram_upsampler.strides == [15, 20]
            torch.testing.assert_close(got(x, t, mel=mel), want)
    with pytest.raises(ValueError, match="unknown DiffWave setting"):
        load_lmnt_checkpoint(tmp_path / "sd.pt", dilation=2)
    with pytest.raises(ValueError, match="no checkpoint at"):
        load_lmnt_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_lmnt_checkpoint(tmp_path / "junk.pt")


# ---- clear errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    (dict(hop_length=74), r"74 = 2 x 37 cannot be split"),
    (dict(hop_length=331), r"331 cannot be split .* upsample_strides"),
    (dict(hop_length=256, upsample_strides=[16, 8]), r"product is hop_length = 256 \(got 128\)"),
    (dict(residual_channels=0), "residual_channels must be a positive integer"),
    (dict(max_steps=1), "max_steps must be >= 2"),
    (dict(upsampler_init="zeros"), "upsampler_init must be 'interpolate' or 'lmnt'"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        DiffWave(**{**TINY, **kw})


def test_input_errors():
    m = DiffWave(**TINY).eval()
    x, t = rand(1, 1, 64), torch.tensor([3.0])
    with pytest.raises(ValueError, match=r"5 mel frames x hop_length 16 = 80 samples, but the audio has 64"):
        m(x, t, mel=rand(1, 6, 5))
    with pytest.raises(ValueError, match=r"\[1, 6, frames\], got \(1, 80, 4\); check \[model\] n_mels"):
        m(x, t, mel=rand(1, 80, 4))
    with pytest.raises(ValueError, match="pass mel="):
        m(x, t)
    with pytest.raises(ValueError, match=r"waveforms \[B, 1, L\]"):
        m(x[:, 0], t, mel=rand(1, 6, 4))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 49\]"):
        m(x, torch.tensor([49.5]), mel=rand(1, 6, 4))
    with pytest.raises(ValueError, match=r"unconditional DiffWave; set \[model\] num_classes > 0"):
        m(x, t, mel=rand(1, 6, 4), y=torch.tensor([0]))
    u = DiffWave(**{**TINY, "n_mels": 0})
    with pytest.raises(ValueError, match="unconditional DiffWave"):
        u(x, t, mel=rand(1, 6, 4))
