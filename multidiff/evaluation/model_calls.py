"""Model calls counted, not assumed: a method's NFE column is what the network actually ran (RePaint's and
DDNM's jumps, guidance's backward passes included)."""
from __future__ import annotations

import contextlib

import torch


class CallCount:
    """Per-item counts while `counting(model)` is open: `calls` forward passes seen by an item (a forward
    over a batch of B counts once for each of its B items), `backward` those that were differentiated
    (a vector-Jacobian product through the model, as reconstruction guidance and Pi-GDM take)."""

    def __init__(self):
        self.items = self.items_with_grad = 0

    def per_item(self, n: int) -> tuple[float, float]:
        """(model calls, of which with a backward pass) per item, for n items completed."""
        return self.items / n, self.items_with_grad / n


@contextlib.contextmanager
def counting(model: torch.nn.Module):
    """Count `model`'s forward calls (its own forward, wherever it is wrapped) while the block runs."""
    count = CallCount()

    def hook(module, args):
        b = int(args[0].shape[0]) if args and isinstance(args[0], torch.Tensor) else 1
        count.items += b
        if torch.is_grad_enabled():
            count.items_with_grad += b

    handle = model.register_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def as_count(v: float) -> int | float:
    """A whole number of calls is shown as one (230, not 230.000)."""
    return int(round(v)) if abs(v - round(v)) < 1e-9 else round(v, 1)
