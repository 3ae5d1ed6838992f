"""Checks every denoiser test module shares, and exact denoisers of Gaussian data for the guidance tests."""
import torch


def assert_starts_at_zero_then_learns(model, x, t, steps: int, lr: float = 2e-3) -> None:
    """A zero-initialised output conv makes the net predict 0 at first; a few AdamW steps on a fixed
    random target must then cut the MSE by 30% (every layer gets gradients through the zero conv)."""
    assert model(x, t).abs().max() == 0
    target = torch.randn_like(x)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = (model(x, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


class CorrelatedGaussian(torch.nn.Module):
    """The exact x0 estimator for x0 ~ N(0, S), S = [[1, rho], [rho, 1]] over the last axis:
    E[x0 | z] = A z with A = alpha S (alpha^2 S + sigma^2 I)^-1, linear in z."""

    def __init__(self, sched, rho):
        super().__init__()
        self.sched, self.S = sched, torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)

    def A(self, t) -> torch.Tensor:
        """[len(t), 2, 2]"""
        ab = self.sched.alpha_bar_at(torch.as_tensor(t, dtype=torch.float64).reshape(-1)).view(-1, 1, 1)
        return ab.sqrt() * self.S @ torch.linalg.inv(ab * self.S + (1 - ab) * torch.eye(2, dtype=torch.float64))

    def forward(self, x, t):
        return (x.double() @ self.A(t).transpose(1, 2)).to(x.dtype)
