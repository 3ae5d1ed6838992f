"""A tiny but real training setup (conv denoiser on smooth 1-D signals) for trainer tests.

Run as a script it trains into argv[1]; tests run it in subprocesses (to kill it) and under
torchrun (to check DistributedDataParallel)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from multidiff.engine import TrainConfig, Trainer, init_distributed
from multidiff.modalities.sections import DiffusionConfig, batch_loss


class Waves(torch.utils.data.Dataset):
    def __init__(self, n=96, length=32):
        g = torch.Generator().manual_seed(123)
        freq = torch.rand(n, 1, generator=g) * 3 + 1
        phase = torch.rand(n, 1, generator=g) * 6.28
        grid = torch.linspace(0, 6.28, length)
        self.x = torch.sin(freq * grid + phase).unsqueeze(1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], 0


class TinyNet(torch.nn.Module):
    def __init__(self, dropout=0.0):
        super().__init__()
        self.a = torch.nn.Conv1d(2, 16, 5, padding=2)
        self.b = torch.nn.Conv1d(16, 1, 5, padding=2)
        self.drop = torch.nn.Dropout(dropout)

    def forward(self, x, t):
        tt = (t / 1000).view(-1, 1, 1).expand_as(x).to(x.dtype)
        return self.b(self.drop(torch.nn.functional.silu(self.a(torch.cat([x, tt], 1)))))


class ToyTask:
    channels_last = False

    def __init__(self, nan_at: int = -1, step_sleep_ms: int = 0):
        self.diff = DiffusionConfig(timesteps=100, beta_end=0.2)
        self.sched = self.diff.build_schedule()
        self.nan_at, self.calls, self.sleep = nan_at, 0, step_sleep_ms / 1000

    def loss(self, model, batch, rand):
        x0, _ = batch
        self.calls += 1
        time.sleep(self.sleep)  # stands in for a heavier model, so a kill can land mid-run
        loss = batch_loss(model, self.diff, self.sched, x0, rand)
        return loss * float("nan") if self.calls == self.nan_at else loss

    def preview(self, model, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("preview")


def make_trainer(run_dir, dist=None, nan_at=-1, step_sleep_ms=0, **overrides):
    cfg = TrainConfig(**{"steps": 12, "batch_size": 8, "lr": 1e-2, "warmup_steps": 2, "checkpoint_every": 3,
                         "keep_checkpoints": 2, "log_every": 1, "precision": "fp32", "threads": 1, **overrides})
    torch.manual_seed(0)
    return Trainer(TinyNet(), Waves(), ToyTask(nan_at, step_sleep_ms), cfg, run_dir, dist=dist, fingerprint="toy")


if __name__ == "__main__":
    run, args = sys.argv[1], dict(a.split("=") for a in sys.argv[2:])
    resume = args.pop("resume", "0") == "1"
    kw = {k: int(v) for k, v in args.items()}
    info = init_distributed("cpu")
    trainer = make_trainer(run, dist=info, **kw)
    trainer.fit(resume=resume)
    if info.enabled:  # let the test compare what every rank holds
        from safetensors.torch import save_file

        save_file(trainer.model.state_dict(), f"{run}/rank{info.rank}.safetensors")
