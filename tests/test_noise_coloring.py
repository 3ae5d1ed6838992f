"""Colored noise in the core (core/noise.py): sampling x = L y with a noise prior N(0, L L^T) is
sampling y with white noise, draw for draw, for every sampler; the loss takes the prior's noise and
weighting."""
import pytest
import torch

from multidiff.core import SAMPLERS, Denoiser, diffusion_loss, sample

from conftest import noise, oracle

D = 6
L = torch.eye(D, dtype=torch.float64) + 0.4 * torch.randn(D, D, generator=torch.Generator().manual_seed(4),
                                                           dtype=torch.float64)
L_INV = torch.linalg.inv(L)


def apply(M, x):
    return x @ M.T.to(x.dtype)  # the map acts on the last dim


class InY(torch.nn.Module):
    """The same network seen in y = L^-1 x: every prediction type is linear in the signal."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, y, t):
        return apply(L_INV, self.net(apply(L, y), t))


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_sampling_with_colored_noise_is_white_sampling_of_y_mapped_by_L(linear, sampler, prediction):
    net = oracle(linear, prediction)
    z = noise(3, 1, D)
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    colored = sample(Denoiser(net, linear, prediction), z, sampler, steps=8, generator=g(),
                     noise_color=lambda w: apply(L, w))
    white_y = sample(Denoiser(InY(net), linear, prediction), z, sampler, steps=8, generator=g())
    torch.testing.assert_close(colored, apply(L, white_y), atol=1e-9, rtol=1e-9)


def test_masked_generation_and_repaint_draw_colored_noise(linear):
    """The known-region re-noising and RePaint's jumps go through the prior too: with a mask that L
    leaves invariant (L acting within the unknown and within the known dims), the same equivalence."""
    M = torch.block_diag(L[:3, :3], L[3:, 3:])
    M_inv = torch.linalg.inv(M)
    mask = torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.float64).view(1, 1, D)
    known = noise(2, 1, D, seed=3)
    net = oracle(linear)

    class Y(torch.nn.Module):
        def forward(self, y, t):
            return apply(M_inv, net(apply(M, y), t))

    z = noise(2, 1, D)
    for kw in ({}, {"repaint": (2, 2)}):
        x = sample(Denoiser(net, linear), z, "ddpm", steps=6, generator=torch.Generator().manual_seed(5),
                   mask=mask, known=known, noise_color=lambda w: apply(M, w), **kw)
        y = sample(Denoiser(Y(), linear), z, "ddpm", steps=6, generator=torch.Generator().manual_seed(5),
                   mask=mask, known=apply(M_inv, known), **kw)
        torch.testing.assert_close(x, apply(M, y), atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(x[..., 3:], known[..., 3:].expand_as(x[..., 3:]))


def test_loss_with_the_priors_noise_and_weighting_is_the_white_loss_of_y(linear):
    """Training in x with noise L eps and error weighting L^-1 is the plain loss of y = L^-1 x0."""
    net = oracle(linear)
    x0 = noise(4, 1, D, seed=2)
    eps = noise(4, 1, D, seed=6)
    t = torch.tensor([10.0, 200.0, 500.0, 900.0], dtype=torch.float64)
    ours = diffusion_loss(net, linear, x0, "eps", t=t, noise=apply(L, eps), error_map=lambda r: apply(L_INV, r))
    white = diffusion_loss(InY(net), linear, apply(L_INV, x0), "eps", t=t, noise=eps)
    assert float(ours) == pytest.approx(float(white), rel=1e-6)  # the loss works in fp32
