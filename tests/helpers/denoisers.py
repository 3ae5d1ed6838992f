"""Checks every denoiser test module shares."""
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
