"""The training engine: exact resume after a real kill, DDP = one process, NaN stop, logs, a
streamed data order."""
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from multidiff.engine import TrainingDiverged, latest_checkpoint
from multidiff.engine.checkpoint import checkpoint_dirs
from multidiff.engine.data_order import DataOrder
from multidiff.engine.distributed import to_device
from multidiff.engine.trainer import TrainConfig, Trainer, lr_at

from helpers.ports import torchrun
from helpers.toy_training import TinyNet, ToyTask, make_trainer

TOY = Path(__file__).parent / "helpers" / "toy_training.py"
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "OMP_NUM_THREADS": "1"}


def weights(ckpt: Path, which="model") -> dict:
    return load_file(str(ckpt / f"{which}.safetensors"))


def same(a: dict, b: dict, atol=0.0) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def run_toy(run_dir, *args, wait=True):
    cmd = [sys.executable, str(TOY), str(run_dir), *args]
    if wait:
        subprocess.run(cmd, check=True, env=ENV, timeout=300, capture_output=True)
        return None
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 12-step run (in a subprocess, like the runs it is compared with)."""
    run = tmp_path_factory.mktemp("ref")
    run_toy(run, "steps=40")
    return run


def test_uninterrupted_run_writes_everything(reference):
    ckpts = checkpoint_dirs(reference / "checkpoints")
    assert [c.name for c in ckpts] == ["step_0000039", "step_0000040"]  # keep_checkpoints = 2, plus the end
    assert sorted(p.name for p in ckpts[-1].iterdir()) == ["ema.safetensors", "model.safetensors",
                                                           "optimizer.safetensors", "state.json"]
    rows = [json.loads(ln) for ln in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (reference / "loss.png").stat().st_size > 1000
    assert (reference / "samples" / "step_0000040.png").exists()


@pytest.mark.parametrize("delay", [0.0, 0.13, 0.41])
def test_killed_run_resumes_to_identical_weights(reference, tmp_path, delay):
    proc = run_toy(tmp_path, "steps=40", "step_sleep_ms=40", wait=False)
    deadline = time.time() + 120
    while latest_checkpoint(tmp_path / "checkpoints") is None:
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads((latest_checkpoint(tmp_path / "checkpoints") / "state.json").read_text())["step"]
    assert killed_at < 40, "kill came too late to test anything"
    for d in checkpoint_dirs(tmp_path / "checkpoints"):  # no half-written checkpoint is ever visible
        assert len(list(d.iterdir())) == 4
    with pytest.raises(subprocess.CalledProcessError) as err:  # no silent restart over the user's run
        run_toy(tmp_path, "steps=40")
    assert b"pass --resume" in err.value.stderr
    run_toy(tmp_path, "steps=40", "resume=1")
    final = latest_checkpoint(tmp_path / "checkpoints")
    ref = latest_checkpoint(reference / "checkpoints")
    for which in ("model", "ema"):
        assert same(weights(final, which), weights(ref, which)), which
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))  # the killed run's extra lines were dropped


def test_two_processes_match_one_with_the_same_global_batch(reference, tmp_path):
    cmd = [*torchrun(2), str(TOY), str(tmp_path), "steps=40"]
    subprocess.run(cmd, check=True, env=ENV, timeout=300, capture_output=True)
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert same(r0, r1)  # every rank holds identical weights
    one = weights(latest_checkpoint(reference / "checkpoints"))
    assert same(r0, one, atol=2e-5)  # gloo's all-reduce sums in another order: float tolerance
    assert not same(r0, one)  # ... but it really ran in two processes


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    full = make_trainer(tmp_path / "a", steps=6)
    full.fit()
    acc = make_trainer(tmp_path / "b", steps=6, grad_accum=2)
    acc.fit()
    a, b = full.model.state_dict(), acc.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, nan_at=5)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 5; the last good checkpoint is .*step_0000003"):
        trainer.fit()
    assert [c.name for c in checkpoint_dirs(tmp_path / "checkpoints")] == ["step_0000003"]


def test_finished_run_is_skipped_and_changed_config_refused(tmp_path):
    make_trainer(tmp_path, steps=3).fit()
    before = (tmp_path / "metrics.jsonl").read_text()
    assert make_trainer(tmp_path, steps=3).fit().name == "step_0000003"
    assert (tmp_path / "metrics.jsonl").read_text() == before
    t = make_trainer(tmp_path, steps=3)
    t.fingerprint = "another model"
    with pytest.raises(ValueError, match="different model/data/diffusion config"):
        t.fit()


def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 55) == pytest.approx(0.55, abs=0.01) and lr_at(cfg, 100) == pytest.approx(0.1)
    const = TrainConfig(steps=100, lr=1.0, warmup_steps=10, lr_schedule="constant")
    assert lr_at(const, 99) == 1.0


def test_bad_train_settings(tmp_path):
    with pytest.raises(ValueError, match="must divide evenly"):
        make_trainer(tmp_path, batch_size=9, grad_accum=2)
    with pytest.raises(ValueError, match="train.precision"):
        TrainConfig(precision="fp16")


# ---- the data order: streamed, and exactly what the eager (pre-streaming) code gave ----------------
def _old_seed(*parts):  # reference copy of the trainer's seed mixing
    h = 0x9E3779B9
    for p in parts:
        h = (h * 1_000_003 + int(p) + 0x7F4A7C15) % (2**63 - 1)
    return h


def _old_indices(n, batch_size, grad_accum, world_size, rank, seed, seeded, step, micro):
    """Reference copy of the eager Trainer._indices: a fresh randperm of the step's epoch every call."""
    micro_global = batch_size // grad_accum
    micro_local = micro_global // world_size
    epoch, b = divmod(step, n // batch_size)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_old_seed(seed, epoch)))
    start = micro * micro_global + rank * micro_local
    part = slice(start, start + micro_local)
    idx = perm[b * batch_size:(b + 1) * batch_size][part].tolist()
    if seeded:
        return [(i, _old_seed(seed, step, part.start + k, 2)) for k, i in enumerate(idx)]
    return idx


class _SeededWaves(torch.utils.data.Dataset):
    seeded_items = True  # random clip starts, as the video datasets draw them

    def __len__(self):
        return 40

    def __getitem__(self, item):
        return item


@pytest.mark.parametrize("grad_accum,start,seeded", [(1, 0, False), (2, 0, False), (1, 5_000_003, False),
                                                     (2, 5_000_003, True)])
def test_data_order_is_streamed_and_the_same_as_the_eager_order(tmp_path, monkeypatch, grad_accum, start, seeded):
    """train.steps = 10**7: the eager loader built 10**7 permutations before step 1; the streamed one
    builds one per epoch it reaches, and from a late resume step none of the earlier epochs."""
    steps = 10**7
    if seeded:
        cfg = TrainConfig(steps=steps, batch_size=8, grad_accum=grad_accum, seed=3, threads=1, precision="fp32")
        trainer = Trainer(TinyNet(), _SeededWaves(), ToyTask(), cfg, tmp_path, fingerprint="toy")
    else:
        trainer = make_trainer(tmp_path, steps=steps, grad_accum=grad_accum)
    n, k = len(trainer.dataset), 30  # 30 micro-batches: 15-30 steps over 2-4 epochs
    want = [_old_indices(n, 8, grad_accum, 1, 0, trainer.cfg.seed, seeded, s, m)
            for s in range(start, start + k // grad_accum) for m in range(grad_accum)]

    built = []
    randperm = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **kw: built.append(a) or randperm(*a, **kw))
    sampler = trainer._batch_sampler(start)
    assert len(sampler) == (steps - start) * grad_accum and not built  # nothing made up front
    got = list(itertools.islice(iter(sampler), k))
    assert got == want
    epochs = {s // trainer.order.batches_per_epoch for s in range(start, start + k // grad_accum)}
    assert len(built) == len(epochs) < k // grad_accum  # each epoch's permutation once, not once per step
    if not seeded:  # the DataLoader streams the same lists
        x, _ = next(trainer._loader(start))
        assert torch.equal(x, trainer.dataset.x[want[0]])


def test_data_order_slices_each_process_as_before():
    for rank in (0, 1):
        order = DataOrder(20, 8, 2, 2, rank, seed=5)
        got = [order.indices(s, m) for s in range(7) for m in range(2)]
        assert got == [_old_indices(20, 8, 2, 2, rank, 5, False, s, m) for s in range(7) for m in range(2)]


def test_data_loader_workers_stream_the_same_batches(tmp_path):
    plain = make_trainer(tmp_path / "a", steps=10**7)
    workers = make_trainer(tmp_path / "b", steps=10**7, num_workers=1)
    for (x0, _), (x1, _) in zip(itertools.islice(plain._loader(3), 14), itertools.islice(workers._loader(3), 14)):
        assert torch.equal(x0, x1)


def test_to_device_keeps_the_batch_structure():
    x, y = torch.randn(2, 3), torch.arange(2)
    out = to_device({"x": x, "pair": (y, [x]), "name": "clip"}, "cpu")
    assert out["name"] == "clip" and isinstance(out["pair"], tuple) and isinstance(out["pair"][1], list)
    assert torch.equal(out["x"], x) and torch.equal(out["pair"][0], y) and torch.equal(out["pair"][1][0], x)
