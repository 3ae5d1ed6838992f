"""A GAN term beside any training task: the generator's loss for the task's total, the discriminator's own
step after each optimizer step, its weights and optimizer in each checkpoint. Used by the autoencoder
(a PatchGAN on images) and by adversarial progressive distillation (a head on the teacher's features).

    term = AdversarialTerm(disc, lr, weight, device, bf16)
    total = rec + term.generator_loss((fake,), (real,), rec=rec, last=output_weight)   # in task.loss
    term.after_step()                                                                  # in task.after_step
    term.log_values(), term.extra_state(), term.load_extra_state(tensors)

`fake` and `real` are the discriminator's arguments (tuples); the fake ones carry the generator's graph. The
discriminator sees them again, detached, in after_step, so its update never reaches the generator and the
generator's term never updates it.
"""
from __future__ import annotations

import json

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F

from .checkpoint import load_optimizer_tensors, optimizer_tensors
from .precision import autocast

GAN_LOSSES = ("hinge", "non_saturating")


def gan_losses(kind: str):
    """(generator loss of fake logits, discriminator loss of real and fake logits) for 'hinge' | 'non_saturating'."""
    if kind == "hinge":
        return (lambda fake: -fake.mean(),
                lambda real, fake: 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean()))
    if kind == "non_saturating":
        return (lambda fake: F.softplus(-fake).mean(),
                lambda real, fake: 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean()))
    raise ValueError(f"the GAN loss must be one of {GAN_LOSSES}, got {kind!r}")


def _detached(args: tuple) -> tuple:
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


def _global_norms(g_rec: torch.Tensor, g_gan: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The norms of the two gradients of the whole batch's losses, whatever the number of processes: of a weight
    (a leaf), the processes' mean gradient; of an activation (per-sample rows), the rows of all processes,
    each scaled as the whole batch's mean loss scales it (1 / processes). One process: the norms themselves."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return g_rec.norm(), g_gan.norm()
    world = torch_dist.get_world_size()
    if last.is_leaf:
        both = torch.stack([g_rec, g_gan])
        torch_dist.all_reduce(both)
        return (both[0] / world).norm(), (both[1] / world).norm()
    squares = torch.stack([g_rec.float().square().sum(), g_gan.float().square().sum()])
    torch_dist.all_reduce(squares)
    return squares[0].sqrt() / world, squares[1].sqrt() / world


class AdversarialTerm:
    """A discriminator `disc` (a module on `device`), its AdamW (betas 0.5 / 0.9, no weight decay; the module's
    `param_groups(lr)` where it has one), the GAN loss pair, and the generator term's `weight`. With
    `adaptive`, the weight is scaled by |grad rec| / |grad gan| at the generator's last layer (Esser et al.
    2021, VQGAN), so it means the GAN gradient's share there whatever the losses' scales."""

    def __init__(self, disc: torch.nn.Module, lr: float, weight: float, device, bf16: bool,
                 gan_loss: str = "hinge", adaptive: bool = True):
        self.disc, self.weight, self.adaptive, self.device, self.bf16 = disc, float(weight), adaptive, device, bf16
        self.gen_loss, self.disc_loss = gan_losses(gan_loss)
        params = disc.param_groups(lr) if hasattr(disc, "param_groups") else disc.parameters()  # (per-part lr)
        self.opt = torch.optim.AdamW(params, lr=lr, betas=(0.5, 0.9), weight_decay=0.0)
        self._pending: list[tuple[tuple, tuple]] = []     # (real, fake) arguments for the discriminator step
        self._sums: dict[str, list[float]] = {}

    def record(self, **values) -> None:
        for k, v in values.items():
            self._sums.setdefault(k, []).append(float(v))

    def generator_loss(self, fake: tuple, real: tuple, rec: torch.Tensor | None = None,
                       last: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted generator term of the discriminator's logits on `fake`; (real, fake) kept for after_step.
        `rec` and `last` (the generator's last weight): the adaptive weight's two gradients."""
        self.disc.requires_grad_(False)
        g = self.gen_loss(self.disc(*fake))
        w = torch.tensor(self.weight)
        if self.adaptive:
            if rec is None or last is None:
                raise ValueError("an adaptive GAN weight needs the reconstruction loss and the generator's last weight")
            n_rec, n_gan = _global_norms(torch.autograd.grad(rec, last, retain_graph=True)[0],
                                         torch.autograd.grad(g, last, retain_graph=True)[0], last)
            w = w * (n_rec / (n_gan + 1e-4)).clamp(0, 1e4).detach()
        self._pending.append((_detached(real), _detached(fake)))
        self.record(g_loss=g.detach(), g_weight=w)
        return w.to(g.device) * g

    def after_step(self) -> None:
        """One discriminator step on the micro-batches of the optimizer step just taken (none pending: nothing)."""
        if not self._pending:
            return
        self.disc.requires_grad_(True)
        with autocast(self.device, self.bf16):
            for real, fake in self._pending:
                d = self.disc_loss(self.disc(*real), self.disc(*fake)) / len(self._pending)
                d.backward()
                self.record(d_loss=d.detach() * len(self._pending))
        if torch_dist.is_available() and torch_dist.is_initialized():  # the generator's grads go through DDP
            for p in self.disc.parameters():
                if p.grad is not None:
                    torch_dist.all_reduce(p.grad)
                    p.grad /= torch_dist.get_world_size()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self._pending = []

    def log_values(self) -> dict:
        out = {k: sum(v) / len(v) for k, v in self._sums.items()}
        self._sums = {}
        return out

    def extra_state(self) -> dict:
        tensors, _ = optimizer_tensors(self.opt)
        return {**{f"disc.{k}": v for k, v in self.disc.state_dict().items()},
                **{f"disc_opt.{k}": v for k, v in tensors.items()}}

    def load_extra_state(self, tensors: dict) -> None:
        self.disc.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("disc.")})
        opt = {k[9:]: v for k, v in tensors.items() if k.startswith("disc_opt.")}
        groups = json.dumps(self.opt.state_dict()["param_groups"])  # lr & co. come from the config
        load_optimizer_tensors(self.opt, opt, {"param_groups": groups})
