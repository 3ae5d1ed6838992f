"""The objective classes give exactly the losses, and draw exactly the random streams, of the
if-chain implementation they replaced (a verbatim copy of it is kept below as the reference)."""
import itertools

import pytest
import torch

from multidiff.core import OBJECTIVES, PREDICTIONS, GeneratorDraws, Schedule, build_objective, diffusion_loss
from multidiff.core.objectives import LOSS_TYPES, WEIGHTINGS, VPObjective
from multidiff.modalities.sections import DiffusionConfig, batch_loss

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- reference: core/losses.py, core/denoiser.py's target_for and modalities/sections.py's batch_loss
# as they were before the objectives (commit 676b21a), copied verbatim apart from the names ---------------
def ref_bcast(v, like: torch.Tensor) -> torch.Tensor:
    if isinstance(v, float | int) or (isinstance(v, torch.Tensor) and v.ndim == 0):
        return float(v)
    v = torch.as_tensor(v, dtype=torch.float64)
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.device, like.dtype)


def ref_target_for(prediction, x0, eps, alpha, sigma):
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return ref_bcast(alpha, x0) * eps - ref_bcast(sigma, x0) * x0


def ref_min_snr_weight(snr, prediction, gamma):
    clipped = snr.clamp(max=gamma)
    if prediction == "x0":
        return clipped
    if prediction == "v":
        return clipped / (snr + 1)
    return torch.where(snr > 0, clipped / snr.clamp(min=1e-20), torch.ones_like(snr))


def ref_diffusion_loss(model, sched, x0, prediction="eps", weighting="uniform", *, min_snr_gamma=5.0, loss_type="l2",
                       mask=None, reduction="mean", t=None, noise=None, generator=None, cond=None, error_map=None):
    B = x0.shape[0]
    if t is None:
        t = torch.randint(0, sched.T, (B,), generator=generator, device="cpu").to(torch.float64)
    t = torch.as_tensor(t, dtype=torch.float64).cpu()
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device="cpu").to(x0.device)
    ab = sched.alpha_bar_at(t)
    alpha, sigma = ab.sqrt(), (1 - ab).sqrt()
    x_t = sched.add_noise(x0, t, noise)
    out = model(x_t, t.to(x0.device, torch.float32), **(cond or {}))
    target = ref_target_for(prediction, x0, noise, alpha, sigma).to(torch.float32)
    err = out.float() - target
    if error_map is not None:
        err = error_map(err)
    err = err.square() if loss_type == "l2" else err.abs()
    if mask is None:
        per_sample = err.flatten(1).mean(1)
    else:
        m = torch.broadcast_to(mask.to(err.dtype), err.shape)
        per_sample = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1)
    if weighting == "min_snr":
        w = ref_min_snr_weight(sched.snr(t), prediction, min_snr_gamma)
        per_sample = per_sample * w.to(per_sample.device, per_sample.dtype)
    return per_sample if reduction == "none" else per_sample.mean()


def ref_batch_loss(net, cfg, sched, x0, rand, cond=None, mask=None, noise_color=None, error_map=None):
    t = rand.randint(sched.T).to(torch.float64).cpu()
    noise = rand.randn(*x0.shape[1:]).to(x0.device, x0.dtype)
    for ndim, fmt in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if x0.ndim == ndim and x0.is_contiguous(memory_format=fmt):
            noise = noise.contiguous(memory_format=fmt)
    if noise_color is not None:
        noise = noise_color(noise)
    return ref_diffusion_loss(net, sched, x0, cfg.prediction, cfg.weighting, min_snr_gamma=cfg.min_snr_gamma,
                              loss_type=cfg.loss_type, mask=mask, t=t, noise=noise, cond=cond, error_map=error_map)


# ---- helpers ----------------------------------------------------------------------------------------
class Recording(torch.nn.Module):
    """A fixed small net that depends on x_t, t and a condition, and records what it was called with."""

    def __init__(self, channels=2):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.w = torch.randn(channels, channels, generator=g) * 0.5
        self.calls = []

    def forward(self, x, t, scale=None):
        self.calls.append((x.detach().clone(), t.clone()))
        out = torch.einsum("oc,bc...->bo...", self.w.to(x.dtype), x) + (t / 1000).view(-1, *[1] * (x.ndim - 1))
        return out if scale is None else out * scale.view(-1, *[1] * (x.ndim - 1))


class Draws:
    """Shaped like the trainer's BatchRandom: draws for a global batch, sliced to this part."""

    def __init__(self, seed, global_n, part):
        self.generator, self.global_n, self.part = torch.Generator().manual_seed(seed), global_n, part

    def randn(self, *shape):
        return torch.randn(self.global_n, *shape, generator=self.generator)[self.part]

    def rand(self, *shape):
        return torch.rand(self.global_n, *shape, generator=self.generator)[self.part]

    def randint(self, high, *shape):
        return torch.randint(0, high, (self.global_n, *shape), generator=self.generator)[self.part]


def roll_error(r):
    """A fixed linear map standing in for a noise prior's L^-1."""
    return r - 0.3 * r.roll(1, -1)


def color(n):
    return 0.5 * n + 0.2 * n.flip(-1)


def assert_same_calls(a: Recording, b: Recording):
    assert len(a.calls) == len(b.calls) == 1
    (xa, ta), (xb, tb) = a.calls[0], b.calls[0]
    assert torch.equal(xa, xb) and torch.equal(ta, tb)


LINEAR = Schedule.linear(1000)
ZERO_SNR = Schedule.linear(1000).rescale_zero_terminal_snr()
CASES = list(itertools.product(PREDICTIONS, WEIGHTINGS, LOSS_TYPES, (False, True), (False, True), ("none", "mean")))


# ---- the loss ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction,weighting,loss_type,masked,mapped,reduction", CASES)
def test_loss_equals_the_old_one_bit_for_bit(prediction, weighting, loss_type, masked, mapped, reduction):
    x0 = torch.randn(5, 2, 8, generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(8) % 3 != 0).float().view(1, 1, 8).expand(5, 1, 8) if masked else None
    kw = dict(min_snr_gamma=3.0, loss_type=loss_type, mask=mask, reduction=reduction,
              error_map=roll_error if mapped else None, cond={"scale": torch.linspace(0.5, 1.5, 5)})
    # drawn from a seeded generator: the same t and noise, in the same order
    new_net, old_net = Recording(), Recording()
    new = diffusion_loss(new_net, LINEAR, x0, prediction, weighting, generator=torch.Generator().manual_seed(3), **kw)
    old = ref_diffusion_loss(old_net, LINEAR, x0, prediction, weighting, generator=torch.Generator().manual_seed(3),
                             **kw)
    assert torch.equal(new, old)
    assert_same_calls(new_net, old_net)
    # given t (fractional, and the pure-noise step of a zero-terminal-SNR schedule) and float64 noise
    t = torch.tensor([0.0, 10.5, 500.0, 998.25, 999.0])
    noise = torch.randn(5, 2, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for sched in (LINEAR, ZERO_SNR):
        new = diffusion_loss(Recording(), sched, x0.double(), prediction, weighting, t=t, noise=noise, **kw)
        old = ref_diffusion_loss(Recording(), sched, x0.double(), prediction, weighting, t=t, noise=noise, **kw)
        assert torch.equal(new, old)


def test_loss_draws_noise_in_the_data_dtype_as_before():
    x0 = torch.zeros(3, 1, 6, dtype=torch.float64)
    new_net, old_net = Recording(1), Recording(1)
    diffusion_loss(new_net, LINEAR, x0, generator=torch.Generator().manual_seed(0))
    ref_diffusion_loss(old_net, LINEAR, x0, generator=torch.Generator().manual_seed(0))
    assert_same_calls(new_net, old_net)


# ---- batch_loss: the trainer's draws --------------------------------------------------------------------
@pytest.mark.parametrize("prediction,weighting,loss_type", list(itertools.product(PREDICTIONS, WEIGHTINGS,
                                                                                      LOSS_TYPES)))
@pytest.mark.parametrize("layout", ["1d", "channels_last", "channels_last_3d"])
def test_batch_loss_equals_the_old_one_with_the_same_draws(prediction, weighting, loss_type, layout):
    shape, fmt = {"1d": ((4, 2, 8), None), "channels_last": ((4, 2, 3, 5), torch.channels_last),
                  "channels_last_3d": ((4, 2, 2, 3, 4), torch.channels_last_3d)}[layout]
    x0 = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    if fmt is not None:
        x0 = x0.contiguous(memory_format=fmt)
    cfg = DiffusionConfig(timesteps=100, prediction=prediction, weighting=weighting, loss_type=loss_type,
                          min_snr_gamma=2.0)
    sched = cfg.build_schedule()
    mask = torch.ones(*shape[:2], *[1] * (len(shape) - 3), shape[-1])
    mask[..., 0] = 0
    for extra in ({}, {"mask": mask, "noise_color": color, "error_map": roll_error}):
        new_net, old_net = Recording(), Recording()
        part = slice(2, 6)  # this process's micro-batch of a global batch of 8
        new = batch_loss(new_net, cfg, sched, x0, Draws(5, 8, part), **extra)
        old = ref_batch_loss(old_net, cfg, sched, x0, Draws(5, 8, part), **extra)
        assert torch.equal(new, old)
        assert_same_calls(new_net, old_net)  # the same t, then the same noise: the run's streams are unchanged
        if fmt is not None:
            assert new_net.calls[0][0].is_contiguous(memory_format=fmt)  # x_t keeps the fast layout


# ---- the objective API ------------------------------------------------------------------------------------
def test_registry_and_config_select_the_objective():
    assert PREDICTIONS == ("eps", "x0", "v") and tuple(OBJECTIVES) == PREDICTIONS + ("flow", "edm")
    assert all(OBJECTIVES[n].name == n for n in OBJECTIVES)
    for name in PREDICTIONS:
        cls = OBJECTIVES[name]
        assert issubclass(cls, VPObjective)
        obj = DiffusionConfig(prediction=name, weighting="min_snr", min_snr_gamma=2.0, loss_type="l1").build_objective()
        assert type(obj) is cls and obj.weighting == "min_snr" and obj.min_snr_gamma == 2.0 and obj.loss_type == "l1"
        assert obj.schedule.T == 1000
    with pytest.raises(ValueError, match="unknown prediction type 'score'"):
        build_objective(LINEAR, "score")
    with pytest.raises(ValueError, match=r"diffusion.prediction = 'score' is not one of \('eps', 'x0', 'v'\)"):
        DiffusionConfig(prediction="score")


def test_objective_owns_the_level_draw_and_the_network_input():
    obj = build_objective(LINEAR, "v")
    t = obj.draw_t(GeneratorDraws(6, torch.Generator().manual_seed(0)))
    assert t.dtype == torch.float64 and t.shape == (6,) and t.device.type == "cpu"
    assert torch.equal(t, torch.randint(0, 1000, (6,), generator=torch.Generator().manual_seed(0)).double())
    x0, noise = torch.ones(6, 1, 4), torch.zeros(6, 1, 4)
    x_in, c_noise = obj.network_input(x0, t, noise)
    assert torch.allclose(x_in, LINEAR.alpha_bar_at(t).sqrt().float().view(-1, 1, 1) * x0)
    assert c_noise.dtype == torch.float32 and torch.equal(c_noise, t.float())
    assert obj.weight(t) is None  # uniform: no multiply at all


def test_loss_needs_draws_or_given_levels_and_noise_and_one_noise_prior_form():
    obj, x0 = build_objective(LINEAR), torch.zeros(2, 1, 4)
    with pytest.raises(ValueError, match="give `draws`"):
        obj.loss(lambda x, t: x, x0)
    assert obj.loss(lambda x, t: x, x0, t=torch.zeros(2), noise=torch.zeros(2, 1, 4)).item() == 0.0
    with pytest.raises(ValueError, match="not both"):
        obj.loss(lambda x, t: x, x0, t=torch.zeros(2), noise=torch.zeros(2, 1, 4), noise_color=color)
