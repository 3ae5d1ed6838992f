"""Fine-tuning a DiffWave vocoder on an acoustic model's own mels (Tacotron 2's ground-truth-aligned
training, Shen et al. 2018): for every training utterance, the mel the acoustic model makes when its
text is aligned to the real mel by MAS (so the frames match the real audio), paired with the real
audio; the vocoder run's EMA weights continue training on those pairs into RUN/vocoder -- a new run
directory that `multidiff vocode` and `multidiff say` take like any vocoder run. The user's vocoder
run is only read."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..data.audio import read_audio
from ..data.mel_check import check_same_mel, clamp_to_range
from ..data.tts import TTSDataset, tts_mel_config
from ..engine.distributed import barrier
from ..engine.runs import save_resolved
from ..engine.trainer import Trainer
from ..modalities.audio import AUDIO, mel_config
from ..modalities.base import Trained
from ..utils import atomic_path, read_json, write_json
from .say import FINETUNED_VOCODER, synthesize_aligned
from .train import archive_training

GTA_FILE = "gta_train"


class AlignedPairs(torch.utils.data.Dataset):
    """(real audio [1, frames * hop], the acoustic model's aligned mel [n_mels, frames], 0)."""

    num_classes = 0

    def __init__(self, folder: Path, sample_rate: int, hop: int):
        self.items = read_json(folder / f"{GTA_FILE}.json")["items"]
        self.mels = np.load(folder / f"{GTA_FILE}.npy", mmap_mode="r", allow_pickle=False)
        self.sample_rate, self.hop = sample_rate, hop

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        it = self.items[i]
        n = it["frames"] * self.hop
        audio = read_audio(it["wav"], self.sample_rate)[:, :n]
        audio = torch.nn.functional.pad(audio, (0, n - audio.shape[1]))
        return audio, torch.from_numpy(np.array(self.mels[:, it["offset"]:it["offset"] + it["frames"]])), 0


def write_aligned_mels(run, tts: Trained, voc_sections: dict, folder: Path, device, bf16: bool, batch: int = 16):
    """The acoustic model's ground-truth-aligned mels of the training split, in folder/gta_train.{npy,json}."""
    ds = TTSDataset(run.dir, "train")
    cfg = mel_config(voc_sections)
    settings = run["sample"]
    mels, items, offset = [], [], 0
    for start in range(0, len(ds), batch):
        idx = range(start, min(len(ds), start + batch))
        got = [ds[i] for i in idx]
        spk = [g[2] for g in got] if run["model"].n_speakers else None
        pred = synthesize_aligned(tts, [g[0].tolist() for g in got], [g[1] for g in got], settings, device, bf16,
                                  spk, seed=settings.seed + start)
        for i, m in zip(idx, pred):
            mels.append(clamp_to_range(m, cfg).numpy())
            items.append({"id": ds.items[i]["id"], "wav": ds.items[i]["wav"], "offset": offset, "frames": m.shape[1]})
            offset += m.shape[1]
    with atomic_path(folder / f"{GTA_FILE}.npy") as tmp:
        np.save(tmp, np.concatenate(mels, 1).astype(np.float32), allow_pickle=False)
    write_json(folder / f"{GTA_FILE}.json", {"items": items})
    run.log(f"[finetune_vocoder] {len(items)} ground-truth-aligned mels of the training split written to {folder}")


def finetune_vocoder(run, tts: Trained, vocoder: Trained, vcfg, dist, resume: bool, bf16: bool) -> dict:
    """Continue training `vocoder`'s weights on (aligned predicted mel, real audio) into RUN/vocoder."""
    folder = run.dir / FINETUNED_VOCODER
    voc = vocoder.sections
    check_same_mel(tts_mel_config(run["data"]), mel_config(voc), f"the tts run '{run.dir}'", f"'{vcfg.run}'")
    settings = run["sample"]
    made_from = {"vocoder": str(vocoder.checkpoint), "tts": str(tts.checkpoint), "lr": vcfg.finetune_lr,
                 "batch": vcfg.finetune_batch, "sampling": [settings.sampler, settings.steps, settings.spacing,
                                                            settings.temperature, settings.seed]}
    if dist.is_main:
        record = folder / "finetuned_from.json"
        if record.is_file() and read_json(record) != made_from:  # other inputs: the old fine-tuning is kept aside
            kept = archive_training(folder)
            run.log(f"[finetune_vocoder] the vocoder, the acoustic model or the settings changed: the previous "
                    f"fine-tuning is kept in {kept}")
        write_aligned_mels(run, tts, voc, folder, dist.device, bf16)
        write_json(record, made_from)
    barrier(dist)
    train = dataclasses.replace(voc["train"], steps=vcfg.finetune_steps, lr=vcfg.finetune_lr,
                                batch_size=vcfg.finetune_batch, warmup_steps=0, lr_schedule="constant",
                                checkpoint_every=min(voc["train"].checkpoint_every, vcfg.finetune_steps),
                                sample_every=0)
    sections = {**voc, "train": train}
    if dist.is_main:
        save_resolved(folder, sections)
    model = vocoder.model.train()
    dataset = AlignedPairs(folder, voc["data"].sample_rate, voc["model"].hop_length)
    task = AUDIO.task(sections, dist.device, bf16, model=model)
    trainer = Trainer(model, dataset, task, train, folder, dist=dist, fingerprint=AUDIO.fingerprint(sections))
    ckpt = trainer.fit(resume=True)  # a stopped fine-tuning continues; the aligned mels are made again, the same
    return {"checkpoint": str(ckpt), "from": str(vocoder.checkpoint), "pairs": len(dataset)}
