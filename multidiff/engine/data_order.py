"""A run's data order, streamed: which dataset items each (step, micro-batch) takes on this process.

Epoch e is the permutation of the dataset seeded by (seed, e), cut into drop-last global batches
of train.batch_size; each step's global batch is cut into grad_accum micro-batches and each of
those into one slice per process. Index lists are made as the DataLoader asks for them and only
the current epoch's permutation is kept, so memory and start-up do not grow with train.steps
(an 800k-step run starts as fast as a 10-step one), and any step can be started from on resume.
"""
from __future__ import annotations

import torch


def seed_of(*parts: int) -> int:
    """A 63-bit seed mixed from integers (seed, epoch), (seed, step), ...; the same on every machine."""
    h = 0x9E3779B9
    for p in parts:
        h = (h * 1_000_003 + int(p) + 0x7F4A7C15) % (2**63 - 1)
    return h


class DataOrder:
    """Dataset indices of (step, micro-batch) on one process. A dataset with `seeded_items = True`
    (random video clip starts) gets (index, seed) pairs instead, the seed a function of
    (seed, step, position in the global batch): the same draw after a resume and for any number of
    processes or accumulation steps."""

    def __init__(self, n_items: int, batch_size: int, grad_accum: int, world_size: int, rank: int,
                 seed: int, seeded_items: bool = False):
        self.n_items, self.batch_size, self.seed, self.seeded_items = n_items, batch_size, seed, seeded_items
        self.micro_global = batch_size // grad_accum
        self.micro_local = self.micro_global // world_size
        self.rank = rank
        self.batches_per_epoch = n_items // batch_size  # drop-last
        self._epoch, self._perm = -1, None

    def part(self, micro: int) -> slice:
        """Which rows of the step's global batch this process handles in micro-batch `micro`."""
        start = micro * self.micro_global + self.rank * self.micro_local
        return slice(start, start + self.micro_local)

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:  # built once per epoch, not once per step
            g = torch.Generator().manual_seed(seed_of(self.seed, epoch))
            self._perm, self._epoch = torch.randperm(self.n_items, generator=g), epoch
        return self._perm

    def indices(self, step: int, micro: int) -> list:
        epoch, b = divmod(step, self.batches_per_epoch)
        part = self.part(micro)
        idx = self.permutation(epoch)[b * self.batch_size:(b + 1) * self.batch_size][part].tolist()
        if self.seeded_items:
            return [(i, seed_of(self.seed, step, part.start + k, 2)) for k, i in enumerate(idx)]
        return idx


class StepBatches(torch.utils.data.Sampler):
    """DataLoader batch sampler of steps [start, end): this process's index list of every
    micro-batch, in order (step by step, micro-batch by micro-batch), each made when asked for.
    It runs in the main process, so DataLoader workers only ever see finished index lists."""

    def __init__(self, order: DataOrder, start: int, end: int, grad_accum: int):
        self.order, self.start, self.end, self.grad_accum = order, start, end, grad_accum

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.grad_accum

    def __iter__(self):
        for step in range(self.start, self.end):
            for m in range(self.grad_accum):
                yield self.order.indices(step, m)
