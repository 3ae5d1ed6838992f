"""The KL autoencoder: shapes per factor, the KL against torch.distributions, gradients, bf16, the
PatchGAN losses, and its training task through the shared Trainer (discriminator saved and resumed)."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from multidiff.data.image import ImageData, build_image_dataset
from multidiff.engine.adversarial import gan_losses
from multidiff.models.autoencoder import Autoencoder, AutoencoderConfig, DiagonalGaussian, PatchDiscriminator
from multidiff.modalities.autoencoder import AutoencoderEval, AutoencoderLoss, AutoencoderTask, LatentCodec
from multidiff.engine import TrainConfig, Trainer, latest_checkpoint

TINY = dict(base_channels=8, norm_groups=4, num_res_blocks=1)


@pytest.mark.parametrize("mult, factor", [([1, 2], 2), ([1, 2, 2], 4), ([1, 2, 2, 2], 8)])
def test_latent_shape_follows_the_factor(mult, factor):
    ae = Autoencoder(AutoencoderConfig(channel_mult=mult, latent_channels=3, attention=True, **TINY))
    assert ae.factor == factor
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    post = ae.encode(x)
    assert post.mean.shape == post.logvar.shape == (2, 3, 32 // factor, 32 // factor)
    assert ae.decode(post.mode()).shape == (2, 1, 32, 32)
    recon, post = ae(x)
    assert recon.shape == x.shape and recon.dtype == torch.float32


def test_bad_configs_and_inputs_say_what_to_change():
    with pytest.raises(ValueError, match="f = 2, 4 or 8"):
        Autoencoder(AutoencoderConfig(channel_mult=[1, 1, 1, 1, 1], **TINY))
    with pytest.raises(ValueError, match="norm_groups"):
        Autoencoder(AutoencoderConfig(base_channels=12, norm_groups=8))
    ae = Autoencoder(AutoencoderConfig(**TINY))
    with pytest.raises(ValueError, match="not divisible by the autoencoder's factor 4"):
        ae.encode(torch.zeros(1, 1, 30, 30))
    with pytest.raises(ValueError, match=r"decode takes \[B, 4, H, W\]"):
        ae.decode(torch.zeros(1, 3, 8, 8))


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    post = DiagonalGaussian(mean, logvar)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    ref = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    assert torch.allclose(post.kl(), ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(DiagonalGaussian(torch.zeros(2, 1), torch.zeros(2, 1)).kl(), torch.zeros(2))


def test_posterior_sampling_is_seeded_and_has_the_right_moments():
    post = DiagonalGaussian(torch.full((1, 1, 200, 200), 2.0), torch.full((1, 1, 200, 200), 2 * math.log(0.5)))
    a = post.sample(torch.Generator().manual_seed(1))
    assert torch.equal(a, post.sample(torch.Generator().manual_seed(1)))
    assert abs(float(a.mean()) - 2.0) < 0.01 and abs(float(a.std()) - 0.5) < 0.01
    assert torch.equal(post.mode(), post.mean)


def test_gradients_reach_the_first_encoder_layer_through_the_bottleneck():
    ae = Autoencoder(AutoencoderConfig(attention=True, **TINY))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    recon, post = ae(x)
    ((recon - x).abs().mean() + 1e-3 * post.kl().mean()).backward()
    grads = [p.grad for p in ae.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    first = ae.encoder.layers[0].weight.grad
    assert first.abs().sum() > 0


def test_bf16_channels_last_matches_fp32():
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(attention=True, **TINY)).eval()
    for p in ae.parameters():  # zero-initialised branches would make the check trivial
        torch.nn.init.normal_(p, 0, 0.1) if p.ndim > 1 else None
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    ref = ae.decode(ae.encode(x).mode())
    ae_cl = ae.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ae_cl.decode(ae_cl.encode(x.contiguous(memory_format=torch.channels_last)).mode())
    assert out.dtype == torch.float32
    assert (out - ref).norm() / ref.norm() < 0.08


def test_patch_discriminator_and_gan_losses():
    d = PatchDiscriminator(3, channels=8, layers=2, norm_groups=4)
    assert d(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 6, 6)  # one logit per overlapping patch
    g_loss, d_loss = gan_losses("hinge")
    assert float(d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0))) == 0.0  # confident and right: no loss
    assert float(d_loss(torch.zeros(4), torch.zeros(4))) == 1.0
    assert float(g_loss(torch.full((4,), 3.0))) == -3.0
    g_ns, d_ns = gan_losses("non_saturating")
    assert float(g_ns(torch.full((4,), 50.0))) < 1e-6
    with pytest.raises(ValueError, match="hinge"):
        gan_losses("wasserstein")


def _sections(steps):
    return {"data": ImageData(size=16, max_items=32), "model": AutoencoderConfig(**TINY),
            "loss": AutoencoderLoss(disc_weight=0.5, disc_start=1, disc_channels=8),
            "train": TrainConfig(steps=steps, batch_size=8, lr=1e-3, warmup_steps=1, checkpoint_every=2,
                                 log_every=1, precision="fp32", keep_checkpoints=5),
            "eval": AutoencoderEval()}


class Killed(Exception):
    pass


class StoppingTask(AutoencoderTask):
    """Dies at the start of step `stop_at` (after the checkpoint of step 2), like a killed run."""
    stop_at = -1

    def loss(self, net, batch, rand):
        if rand.step == self.stop_at:
            raise Killed
        return super().loss(net, batch, rand)


def _fit(run_dir, stop_at=-1, resume=False):
    s = _sections(4)
    ds = build_image_dataset(s["data"], "train")
    torch.manual_seed(0)  # same initial weights for every trainer
    model = Autoencoder(s["model"])
    task = StoppingTask(s, torch.device("cpu"), False, torch.stack([ds[i][0] for i in range(2)]))
    task.stop_at = stop_at
    trainer = Trainer(model, ds, task, s["train"], run_dir, fingerprint="ae-test")
    trainer.fit(resume=resume)
    return trainer, task


def test_discriminator_trains_is_checkpointed_and_resumes_exactly(tmp_path):
    full, task = _fit(tmp_path / "full")
    rows = [json.loads(ln) for ln in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    assert rows[0].keys() >= {"rec", "kl"} and "d_loss" not in rows[0]   # the GAN switches on after step 1
    assert rows[-1].keys() >= {"rec", "kl", "g_loss", "g_weight", "d_loss"}
    extra = load_file(str(latest_checkpoint(tmp_path / "full/checkpoints") / "extra.safetensors"))
    assert any(k.startswith("disc.") for k in extra) and any(k.startswith("disc_opt.") for k in extra)
    # killed in step 3, resumed from the step-2 checkpoint: model and discriminator match the uninterrupted run
    with pytest.raises(Killed):
        _fit(tmp_path / "part", stop_at=2)
    resumed, rtask = _fit(tmp_path / "part", resume=True)
    for a, b in ((full.model, resumed.model), (task.gan.disc, rtask.gan.disc)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    assert (tmp_path / "full/samples/step_0000004.png").exists()  # preview: originals over reconstructions


def test_codec_scales_and_downsamples_masks():
    ae = Autoencoder(AutoencoderConfig(**TINY))
    codec = LatentCodec(ae, 2.0, {})
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    z = codec.encode(x)
    assert z.shape == (3, 4, 4, 4) and torch.allclose(z, 2.0 * ae.encode(x).mean, atol=1e-5)
    assert torch.allclose(codec.decode(z), ae.decode(z / 2.0), atol=1e-5)
    mask = torch.ones(1, 1, 16, 16)
    mask[..., 5, 9] = 0   # one unknown pixel makes its whole 4x4 cell unknown
    m = codec.downsample_mask(mask)
    assert m.shape == (1, 1, 4, 4) and m.sum() == 15 and m[0, 0, 1, 2] == 0
