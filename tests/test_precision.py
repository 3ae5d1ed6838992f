"""bf16 autocast keeps fp32 master weights and tracks the fp32 loss curve."""
import json
from pathlib import Path

import torch

from multidiff.kinds import schemas
from multidiff.modalities.image import IMAGE
from multidiff.pipelines.train import train_model
from multidiff.engine.runs import Run, load_recipe
from multidiff.engine.distributed import DistInfo
from multidiff.engine.precision import InferenceModel, resolve_precision

ROOT = Path(__file__).parent.parent
TINY = ["model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
        "train.batch_size=32", "train.warmup_steps=5", "train.log_every=1", "train.sample_every=0"]


def losses(tmp_path, precision, steps=40):
    _, s = load_recipe(ROOT / "recipes/image_digits", TINY + [f"train.precision={precision}", f"train.steps={steps}",
                                                               f"train.checkpoint_every={steps}"], schemas())
    out = tmp_path / precision
    train_model(Run(out, s, log=lambda *a: None), IMAGE, DistInfo(), resume=False)
    state = json.loads(next((out / "checkpoints").iterdir()).joinpath("state.json").read_text())
    assert state["precision"] == precision
    return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_bf16_loss_curve_matches_fp32(tmp_path):
    a, b = losses(tmp_path, "fp32"), losses(tmp_path, "bf16")
    # the first step sees identical weights, batch and noise: only bf16 rounding differs
    assert abs(b[0] / a[0] - 1) < 0.03, (a[0], b[0])
    # afterwards the runs drift apart but learn at the same rate
    assert abs(sum(b[-10:]) / sum(a[-10:]) - 1) < 0.1, (a[-10:], b[-10:])
    assert sum(b[-10:]) < 0.8 * sum(b[:10])


def test_precision_policy_and_inference_wrapper():
    assert resolve_precision("fp32", torch.device("cpu")) is False
    assert resolve_precision("bf16", torch.device("cpu")) is True
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    class Net(torch.nn.Module):
        def forward(self, x, t):
            assert torch.is_autocast_enabled('cpu') and x.is_contiguous(memory_format=torch.channels_last)
            return net(x)

    out = InferenceModel(Net(), torch.device("cpu"), bf16=True)(torch.randn(2, 1, 8, 8), torch.zeros(2))
    assert out.dtype == torch.float32 and out.shape == (2, 1, 8, 8)
