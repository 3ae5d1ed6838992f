"""Classifier-free guidance and masked generation (replacement, RePaint, reconstruction guidance) for any shape."""
import pytest
import torch

from multidiff.core import SAMPLERS, Denoiser, GuidedModel, ReconstructionGuided, repaint_schedule, sample

from conftest import noise, oracle
from helpers.denoisers import CorrelatedGaussian


class ClassShift(torch.nn.Module):
    """eps = eps_oracle + 0.1 * y, and counts calls/batch sizes (to check the batched call)."""

    def __init__(self, base):
        super().__init__()
        self.base, self.calls = base, []

    def forward(self, x, t, y):
        self.calls.append(x.shape[0])
        return self.base(x, t) + 0.1 * y.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


def test_cfg_is_one_batched_call_and_the_guidance_formula(linear):
    model = ClassShift(oracle(linear))
    x, t = noise(3, 2, 4), torch.full((3,), 500.0)
    y, null = torch.tensor([1, 2, 3]), torch.zeros(3, dtype=torch.long)
    guided = GuidedModel(model, 3.0, {"y": null})
    out = guided(x, t, y=y)
    assert model.calls == [6]
    c, u = model(x, t, y), model(x, t, null)
    assert torch.allclose(out, u + 3.0 * (c - u), atol=1e-12)


def test_cfg_scale_one_is_the_conditional_model_and_sampling_uses_it(linear):
    model = ClassShift(oracle(linear))
    den = Denoiser(model, linear)
    z = noise(2, 1, 4)
    cond = {"y": torch.tensor([2, 5])}
    plain = sample(den, z, "dpmpp_2m", steps=5, cond=cond)
    one = sample(Denoiser(GuidedModel(model, 1.0, {"y": torch.zeros(2, dtype=torch.long)}), linear), z,
                 "dpmpp_2m", steps=5, cond=cond)
    assert torch.allclose(plain, one, atol=1e-10)
    model.calls.clear()
    guided = sample(den, z, "dpmpp_2m", steps=5, cond=cond, guidance_scale=4.0,
                    uncond={"y": torch.zeros(2, dtype=torch.long)})
    assert model.calls == [4] * 5 and not torch.allclose(guided, plain)
    with pytest.raises(ValueError, match="needs both `cond` and `uncond`"):
        sample(den, z, "ddim", steps=5, cond=cond, guidance_scale=2.0)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("shape,mask_shape", [
    ((2, 1, 32), (2, 1, 32)),            # a waveform gap
    ((2, 3, 8, 8), (2, 1, 8, 8)),        # an image hole, mask broadcast over channels
    ((2, 3, 6, 4, 4), (1, 1, 6, 1, 1)),  # missing video frames
])
def test_masked_sampling_keeps_the_known_part_exactly(linear, sampler, shape, mask_shape):
    known = noise(*shape, seed=4, dtype=torch.float32).clamp(-1, 1)
    mask = (torch.rand(mask_shape, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    x = sample(Denoiser(oracle(linear), linear), noise(*shape, dtype=torch.float32), sampler, steps=6,
               mask=mask, known=known, generator=torch.Generator().manual_seed(0))
    m = mask.expand(shape).bool()
    assert torch.equal(x[m], known[m])
    assert not torch.allclose(x[~m], known[~m])


def test_masked_generation_fills_the_unknown_part_from_the_data_distribution(linear):
    """With independent Gaussian data the unknown half must still come out N(0.3, 0.5^2)."""
    shape = (20_000, 1, 2)
    known = torch.full(shape, -1.0, dtype=torch.float64)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 2)
    for sampler in ("ddpm", "dpmpp_2m"):
        x = sample(Denoiser(oracle(linear), linear), noise(*shape), sampler, steps=250, mask=mask, known=known,
                   generator=torch.Generator().manual_seed(0))
        filled = x[..., 1]
        assert abs(filled.mean().item() - 0.3) < 0.015 and abs(filled.std().item() - 0.5) < 0.015


def test_repaint_schedule_matches_the_paper_and_diffusers():
    """T=250, j=10, r=10: 250 steps down plus 9 extra passes over every 10-step window but the last."""
    sched = repaint_schedule(250, jump_length=10, jump_n_sample=10)
    moves = list(zip(sched[:-1], sched[1:]))
    downs = sum(b < a for a, b in moves)
    assert sched[0] == 249 and sched[-1] == -1
    assert len(moves) == 4570 and downs == 250 + 24 * 9 * 10 and len(moves) - downs == 24 * 9 * 10
    from diffusers import RePaintScheduler

    ref = RePaintScheduler(num_train_timesteps=1000)
    ref.set_timesteps(250, jump_length=10, jump_n_sample=10)
    assert [4 * t for t in sched[:-1]] == ref.timesteps.tolist()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_repaint_keeps_known_and_calls_the_model_once_per_step_down(linear, sampler):
    calls = []
    base = oracle(linear)

    def model(x, t):
        calls.append(1)
        return base(x, t)

    shape = (2, 3, 4, 4)
    known = noise(*shape, seed=9).clamp(-1, 1)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[..., :2] = 1
    x = sample(Denoiser(model, linear), noise(*shape), sampler, steps=20, mask=mask, known=known,
               repaint=(5, 3), generator=torch.Generator().manual_seed(0))
    sched = repaint_schedule(20, 5, 3)
    assert len(calls) == sum(b < a for a, b in zip(sched[:-1], sched[1:]))
    assert torch.equal(x[..., :2], known[..., :2])


def test_repaint_harmonises_better_than_plain_replacement(linear):
    """Correlated data (x1 = x0 exactly): the generated half should follow the known half.
    RePaint's resampling lets the unknown part catch up with the known part."""

    class Copy(torch.nn.Module):  # optimal x0 estimator for x0 = (u, u), u ~ N(0, 1)
        def forward(self, x, t):
            ab = linear.alpha_bar_at(t.double()).view(-1, 1, 1)
            a, s = ab.sqrt(), (1 - ab).sqrt()
            u = a * x.sum(-1, keepdim=True) / (2 * a**2 + s**2)
            return u.expand_as(x).to(x.dtype)

    shape = (4000, 1, 2)
    known = torch.zeros(shape, dtype=torch.float64)
    known[..., 0] = torch.linspace(-1, 1, 4000, dtype=torch.float64).view(-1, 1)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 2)
    den = Denoiser(Copy(), linear, "x0")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    err = lambda x: (x[..., 1] - known[..., 0]).pow(2).mean().item()  # noqa: E731
    for sampler in ("ddpm", "ddim"):
        plain = sample(den, noise(*shape), sampler, steps=50, mask=mask, known=known, generator=g())
        rp = sample(den, noise(*shape), sampler, steps=50, mask=mask, known=known, repaint=(1, 5), generator=g())
        assert err(rp) < 0.6 * err(plain), (sampler, err(rp), err(plain))


def test_reconstruction_guidance_matches_its_closed_form_in_vp_and_ve_views(linear):
    """Linear estimator x0 = A z: grad_z ||k - (A z)_a||^2 = -2 A_a (k - (A z)_a), so the guided
    unknown entry is x0_b + w alpha A_ab (k - x0_a); the known entry is left alone."""
    model, w, k, t = CorrelatedGaussian(linear, 0.8), 3.0, 1.5, 400.0
    mask = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    known = torch.tensor([[[k, 0.0]]], dtype=torch.float64)
    z = noise(1, 1, 2)
    ab = float(linear.alpha_bar_at(torch.tensor([t], dtype=torch.float64)))
    A = model.A(t)[0]
    x0 = z[0, 0] @ A.T
    want = x0.clone()
    want[1] += w * ab ** 0.5 * A[0, 1] * (k - x0[0])
    rg = ReconstructionGuided(Denoiser(model, linear, "x0"), mask, known, w)
    est = rg.vp(z, torch.tensor([t]), ab)
    torch.testing.assert_close(est.x0[0, 0], want, rtol=1e-6, atol=1e-8)  # t reaches the model as float32
    torch.testing.assert_close(est.eps, (z - ab ** 0.5 * est.x0) / (1 - ab) ** 0.5)  # a consistent pair
    sigma_ve = ((1 - ab) / ab) ** 0.5  # the same state in VE coordinates: x = z / alpha
    torch.testing.assert_close(rg(z / ab ** 0.5, sigma_ve, torch.tensor([t]))[0, 0], want, rtol=1e-6, atol=1e-8)  # t reaches the model as float32


def test_reconstruction_guidance_reaches_through_the_sampling_wrapper_and_refuses_a_no_grad_model(linear):
    """The recipes wrap nets in InferenceModel; its forward must let the guidance's backward through
    (it once ran under no_grad, which left only x0's identity path: guidance silently did nothing)."""
    from multidiff.engine.precision import InferenceModel

    model = CorrelatedGaussian(linear, 0.8)
    mask, known = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64), torch.ones(1, 1, 2, dtype=torch.float64)
    z, t = noise(1, 1, 2), torch.tensor([400.0])
    wrapped = Denoiser(InferenceModel(model, torch.device("cpu"), bf16=False), linear, "x0")
    guided = ReconstructionGuided(wrapped, mask, known, 3.0).vp(z.float(), t, 0.5).x0
    plain = wrapped.vp(z.float(), t, 0.5).x0
    assert (guided - plain)[..., 1].abs().item() > 1e-3 and torch.equal(guided[..., 0], plain[..., 0])

    class NoGrad(torch.nn.Module):
        @torch.no_grad()
        def forward(self, x, t):
            return model(x, t)
    with pytest.raises(ValueError, match="needs gradients through the model"):
        ReconstructionGuided(Denoiser(NoGrad(), linear, "x0"), mask, known, 3.0).vp(z, t, 0.5)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_reconstruction_guidance_harmonises_better_than_plain_replacement(linear, sampler):
    """Strongly correlated data, first entry known: replacement leaves the second entry's samples
    too loosely tied to the known one; reconstruction guidance pulls them toward the exact
    conditional, E[x_b | x_a = k] = rho k, with the conditional spread sqrt(1 - rho^2)."""
    rho, n = 0.95, 2000
    model = CorrelatedGaussian(linear, rho)
    known = torch.zeros(n, 1, 2, dtype=torch.float64)
    known[..., 0] = torch.linspace(-1.5, 1.5, n, dtype=torch.float64).view(-1, 1)
    mask = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    den = Denoiser(model, linear, "x0")
    err = lambda x: (x[..., 1] - rho * known[..., 0]).pow(2).mean().item()  # noqa: E731
    kw = dict(steps=25, mask=mask, known=known)
    plain = err(sample(den, noise(n, 1, 2), sampler, generator=torch.Generator().manual_seed(0), **kw))
    guided = err(sample(den, noise(n, 1, 2), sampler, reconstruction=2.0, generator=torch.Generator().manual_seed(0),
                        **kw))
    exact = 1 - rho ** 2  # the conditional variance: the error of perfect conditional samples
    # measured: ddim 0.41 -> 0.11, dpmpp_2m 0.46 -> 0.22 (exact 0.0975)
    assert guided < 0.6 * plain and guided > 0.8 * exact, (plain, guided, exact)


@pytest.mark.parametrize("kwargs,match", [
    (dict(mask=torch.ones(2, 1, 4)), "needs both"),
    (dict(mask=torch.ones(2, 1, 5), known=torch.zeros(2, 1, 4)), "does not broadcast"),
    (dict(mask=torch.full((2, 1, 4), 0.5), known=torch.zeros(2, 1, 4)), "binary"),
    (dict(mask=torch.ones(2, 1, 4), known=torch.zeros(2, 1, 3)), "`known` has shape"),
    (dict(mask=torch.ones(2, 1, 4), known=torch.zeros(2, 1, 4), repaint=(2, 2), sampler="heun"), "RePaint"),
    (dict(reconstruction=1.0), "reconstruction guidance needs `mask` and `known`"),
    (dict(mask=torch.ones(2, 1, 4), known=torch.zeros(2, 1, 4), reconstruction=0.0), "weight must be > 0"),
])
def test_bad_mask_input(linear, kwargs, match):
    kwargs = {"sampler": "ddim", **kwargs}
    with pytest.raises(ValueError, match=match):
        sample(Denoiser(oracle(linear), linear), noise(2, 1, 4), steps=4, **kwargs)


# ---- projection of the clean estimate (data consistency) ------------------------------------------
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_x0_projection_sees_every_estimate_and_steers_the_sample(linear, sampler):
    """Every sampler hands each clean estimate to the projection, with the level's VE sigma (falling),
    and steps with what it returns: projecting onto a fixed signal makes the output that signal, and
    the identity projection changes nothing."""
    den = Denoiser(oracle(linear), linear)
    z = noise(2, 1, 6)
    fixed = torch.linspace(-0.5, 0.5, 6, dtype=z.dtype).expand(2, 1, 6)
    seen = []

    def onto_fixed(x0, sigma):
        seen.append(float(sigma))
        return fixed.clone()

    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    out = sample(den, z, sampler, steps=6, generator=g(), x0_projection=onto_fixed)
    torch.testing.assert_close(out, fixed, atol=1e-6, rtol=1e-6)
    assert len(seen) >= 6 and all(a >= b for a, b in zip(seen, seen[1:])) and seen[-1] < seen[0]
    plain = sample(den, z, sampler, steps=6, generator=g())
    same = sample(den, z, sampler, steps=6, generator=g(), x0_projection=lambda x0, sigma: x0)
    torch.testing.assert_close(same, plain, atol=1e-10, rtol=1e-10)
