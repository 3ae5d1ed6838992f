"""Prediction conversions, loss targets, weightings, masks and reductions."""
import pytest
import torch

from multidiff.core import OBJECTIVES, PREDICTIONS, diffusion_loss, min_snr_weight

from conftest import noise


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_targets_convert_back_exactly(prediction):
    obj = OBJECTIVES[prediction]
    x0, eps = noise(4, 3, 5, seed=1), noise(4, 3, 5, seed=2)
    ab = torch.tensor([0.999, 0.5, 0.1, 1e-4], dtype=torch.float64)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x_t = a.view(-1, 1, 1) * x0 + s.view(-1, 1, 1) * eps
    est = obj.to_estimate(obj.target(x0, eps, a, s), x_t, a, s)
    assert torch.allclose(est.x0, x0, atol=1e-10) and torch.allclose(est.eps, eps, atol=1e-10)
    # the same output read in VE coordinates x = x0 + sigma_ve eps, where the net saw x * c_in = x_t
    sigma_ve, c_in = (s / a).view(-1, 1, 1), a.view(-1, 1, 1)
    x_ve = x0 + sigma_ve * eps
    assert torch.allclose(x_ve * c_in, x_t, atol=1e-12)
    assert torch.allclose(obj.denoise_ve(obj.target(x0, eps, a, s), x_ve, sigma_ve, c_in), x0, atol=1e-10)
    # and with one float level for the whole batch, as the VE samplers call it
    est1 = obj.to_estimate(obj.target(x0, eps, 0.8, 0.6), 0.8 * x0 + 0.6 * eps, 0.8, 0.6)
    assert torch.allclose(est1.x0, x0, atol=1e-10) and torch.allclose(est1.eps, eps, atol=1e-10)
    assert torch.allclose(obj.denoise_ve(obj.target(x0, eps, 0.8, 0.6), x0 + 0.75 * eps, 0.75, 0.8), x0, atol=1e-10)


class Oracle(torch.nn.Module):
    """Knows the noise it was given, so it can output the exact target: loss must be 0."""

    def __init__(self, sched, x0, eps, prediction):
        super().__init__()
        self.sched, self.x0, self.eps, self.prediction = sched, x0, eps, prediction

    def forward(self, x_t, t):
        ab = self.sched.alpha_bar_at(t.double())
        return OBJECTIVES[self.prediction].target(self.x0, self.eps, ab.sqrt(), (1 - ab).sqrt()).float()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("weighting", ["uniform", "min_snr"])
def test_perfect_model_has_zero_loss_and_errors_are_measured(linear, prediction, weighting):
    x0, eps = noise(4, 2, 8, dtype=torch.float32), noise(4, 2, 8, seed=3, dtype=torch.float32)
    t = torch.tensor([0.0, 100.0, 500.0, 999.0])
    m = Oracle(linear, x0, eps, prediction)
    kw = dict(prediction=prediction, weighting=weighting, t=t, noise=eps)
    assert diffusion_loss(m, linear, x0, **kw).item() < 1e-10
    off = lambda x, t: m(x, t) + 0.5  # noqa: E731
    per = diffusion_loss(off, linear, x0, reduction="none", **kw)
    w = min_snr_weight(linear.snr(t), prediction, 5.0) if weighting == "min_snr" else torch.ones(4)
    assert torch.allclose(per, 0.25 * w.float(), rtol=1e-5)
    l1 = diffusion_loss(off, linear, x0, loss_type="l1", reduction="none", **kw)
    assert torch.allclose(l1, 0.5 * w.float(), rtol=1e-5)


def test_min_snr_weights_are_min_snr_gamma_in_x0_space():
    snr = torch.tensor([0.0, 0.1, 1.0, 5.0, 100.0], dtype=torch.float64)
    g = 5.0
    x0w = torch.minimum(snr, torch.tensor(g, dtype=torch.float64))
    assert torch.allclose(min_snr_weight(snr, "x0", g), x0w)
    # eps-MSE = SNR * x0-MSE, so the eps weight times SNR is the x0 weight
    assert torch.allclose(min_snr_weight(snr, "eps", g)[1:] * snr[1:], x0w[1:])
    assert min_snr_weight(snr, "eps", g)[0].item() == 1.0
    # v-MSE = (SNR + 1) * x0-MSE
    assert torch.allclose(min_snr_weight(snr, "v", g) * (snr + 1), x0w)


def test_mask_restricts_loss_per_sample(linear):
    x0, eps = torch.zeros(2, 1, 4), noise(2, 1, 4, dtype=torch.float32)
    mask = torch.tensor([[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 1.0]]])
    err = torch.tensor([[[1.0, 3.0, 100.0, 100.0]], [[100.0, 100.0, 100.0, 2.0]]])
    model = lambda x, t: eps + err  # noqa: E731
    per = diffusion_loss(model, linear, x0, t=torch.tensor([3.0, 7.0]), noise=eps, mask=mask, reduction="none")
    assert torch.allclose(per, torch.tensor([(1 + 9) / 2, 4.0]))
    mean = diffusion_loss(model, linear, x0, t=torch.tensor([3.0, 7.0]), noise=eps, mask=mask)
    assert mean.item() == pytest.approx(4.5)


def test_random_timesteps_and_gradients_flow(linear):
    net = torch.nn.Conv1d(1, 1, 3, padding=1)
    loss = diffusion_loss(lambda x, t: net(x), linear, noise(8, 1, 16, dtype=torch.float32),
                          generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and net.weight.grad is not None and torch.isfinite(net.weight.grad).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(prediction="score"), "unknown prediction"),
    (dict(weighting="p2"), "unknown weighting"),
    (dict(loss_type="huber"), "unknown loss_type"),
    (dict(reduction="sum"), "unknown reduction"),
    (dict(t=torch.zeros(3)), r"t must have shape \[2\]"),
])
def test_bad_loss_options(linear, kwargs, match):
    with pytest.raises(ValueError, match=match):
        diffusion_loss(lambda x, t: x, linear, torch.zeros(2, 1, 4), **kwargs)


def test_wrong_model_output_shape(linear):
    with pytest.raises(ValueError, match="model returned shape"):
        diffusion_loss(lambda x, t: x[:, :, :2], linear, torch.zeros(2, 1, 4))
