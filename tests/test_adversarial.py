"""The GAN machinery shared by the autoencoder and adversarial distillation (engine/adversarial.py), the feature
discriminator on a denoiser's middle block (nn/discriminator.py), and the forward-process draw that puts a
student's landing point and real data on one level (core/distillation.renoise)."""
import pytest
import torch
from torch import nn

from multidiff.core.distillation import noised, renoise
from multidiff.engine.adversarial import AdversarialTerm
from multidiff.errors import UserError
from multidiff.models.unet2d import UNet2D, UNet2DConfig
from multidiff.models.unet3d import UNet3D, UNet3DConfig
from multidiff.core.objectives import build_objective
from multidiff.core.schedule import Schedule
from multidiff.nn.discriminator import (FeatureDiscriminator, FeatureHead, middle_block, middle_channels,
                                        middle_features)
from multidiff.pipelines.distill import feature_adversary

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_unet2d(num_classes=0):
    return UNet2D(UNet2DConfig(in_channels=1, base_channels=16, channel_mult=[1, 2], num_res_blocks=1,
                               attention_resolutions=[], norm_groups=8, num_classes=num_classes,
                               image_size=16)).eval()


def test_renoise_draws_the_forward_process_from_one_level_to_a_noisier_one():
    """z_s ~ q(z_s | x0) noised on to abar_u gives q(z_u | x0): mean sqrt(abar_u) x0, variance 1 - abar_u (measured
    over 400k draws per sample); abar_s = 1 (clean data) is the plain forward draw, `noised`."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.8, -0.5, 0.0]).view(3, 1).expand(3, 400_000)
    ab_s, ab_u = torch.tensor([0.9, 1.0, 0.5], dtype=torch.float64), torch.tensor([0.3, 0.6, 0.5], dtype=torch.float64)
    z_s = noised(x0, ab_s, torch.randn(x0.shape, generator=g))
    z_u = renoise(z_s, ab_s, ab_u, torch.randn(x0.shape, generator=g))
    torch.testing.assert_close(z_u.mean(1), ab_u.sqrt().float() * x0[:, 0], atol=4e-3, rtol=0)
    torch.testing.assert_close(z_u.var(1), (1 - ab_u).float(), atol=6e-3, rtol=0)
    same = torch.randn(3, 5, generator=g)
    torch.testing.assert_close(renoise(same, ab_u, ab_u, torch.randn(3, 5)), same)  # no step up: unchanged


@pytest.mark.parametrize("model", ["unet2d", "unet3d"])
def test_middle_features_are_the_bottleneck_output_without_running_the_decoder(model):
    """The features are exactly what the middle block gives in a full forward pass; the decoder half never runs;
    gradients reach the input (the generator's term goes through the frozen backbone)."""
    torch.manual_seed(0)
    if model == "unet2d":
        net, x = tiny_unet2d(), torch.randn(2, 1, 16, 16)
    else:
        net = UNet3D(UNet3DConfig(in_channels=1, image_size=8, frames=4, base_channels=16, channel_mult=[1, 2],
                                  num_res_blocks=1, attention_resolutions=[], num_heads=2, norm_groups=8)).eval()
        x = torch.randn(2, 1, 4, 8, 8)
    t = torch.tensor([10.0, 500.0])
    seen = []
    middle_block(net).register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    net(x, t)
    full = seen.pop()
    ran_out = []
    net.out_conv.register_forward_hook(lambda *a: ran_out.append(1))
    x.requires_grad_(True)
    feats = middle_features(net, lambda: net(x, t), 2)
    C = middle_channels(middle_block(net))
    if model == "unet2d":   # [B, C, h, w] -> [B, C, h * w]
        torch.testing.assert_close(feats.detach(), full.flatten(2))
    else:                   # the 3-D U-Net's [B * T, C, 1, h, w] -> [B, C, T * h * w], each clip's frames its own
        torch.testing.assert_close(feats.detach(), full.reshape(2, 4, C, -1).transpose(1, 2).reshape(2, C, -1))
        torch.testing.assert_close(feats.detach()[1, :, :full[0].numel() // C], full[4].reshape(C, -1))
    assert not ran_out and feats.shape[:2] == (2, C)
    feats.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_model_without_a_middle_block_is_refused_with_one_line():
    with pytest.raises(UserError, match="Conv1d has none: drop distill.adversarial"):
        feature_adversary(nn.Conv1d(1, 4, 3), None, 0, 1e-3, 0.5, torch.device("cpu"), False)


def test_the_discriminator_learns_to_tell_real_from_fake_and_only_its_own_step_updates_it():
    """A FeatureHead on fixed 'features': real ~ N(0, 1), fake ~ N(0.7, 1) per position. The hinge loss starts near
    1 (chance) and falls as after_step trains the head; the generator term's gradient reaches the fake features
    and never the head (whose weights change only in after_step)."""
    torch.manual_seed(0)
    term = AdversarialTerm(FeatureHead(8, num_classes=3), lr=3e-3, weight=1.0, device=torch.device("cpu"),
                           bf16=False, adaptive=False)
    g = torch.Generator().manual_seed(1)
    y = torch.arange(16) % 3
    first = last = None
    for step in range(150):
        real = torch.randn(16, 8, 4, 4, generator=g)
        fake = (torch.randn(16, 8, 4, 4, generator=g) + 0.7).requires_grad_(True)
        before = [p.detach().clone() for p in term.disc.parameters()]
        term.generator_loss((fake, y), (real, y)).backward()
        assert fake.grad is not None and all(p.grad is None for p in term.disc.parameters())
        assert all(torch.equal(a, b) for a, b in zip(before, term.disc.parameters()))
        term.after_step()
        d = term.log_values()["d_loss"]
        first = d if first is None else first
        last = d
    assert first > 0.9 and last < 0.6, (first, last)


def test_the_feature_discriminator_trains_a_copy_of_the_network_and_learns_in_tens_of_steps():
    """FeatureDiscriminator: a copy of a U-Net (the original's weights never change) read to its middle block at
    the inputs' noise level, plus a head. Real: smooth blobs; fake: the same blobs with a fine checkerboard -- a
    difference of detail that the middle block's coarse features show only once the copy adapts. Within 60
    discriminator steps the hinge loss falls from chance to well below it; the generator's term reaches the fake
    inputs and leaves the discriminator alone; the copy's lr is a tenth of the head's."""
    torch.manual_seed(0)
    net = tiny_unet2d(num_classes=2)
    original = {k: v.clone() for k, v in net.state_dict().items()}
    objective = build_objective(Schedule.cosine(1000), "v")
    disc = FeatureDiscriminator(net, objective, num_classes=2)
    term = AdversarialTerm(disc, lr=2e-3, weight=1.0, device=torch.device("cpu"), bf16=False, adaptive=False)
    assert [g["lr"] for g in term.opt.param_groups] == [2e-3, pytest.approx(2e-4)]
    g = torch.Generator().manual_seed(1)
    checker = (torch.arange(16).view(1, 16) + torch.arange(16).view(16, 1)) % 2 * 0.6 - 0.3
    t = torch.full((16,), 50.0, dtype=torch.float64)
    ab = objective.schedule.alpha_bar_at(t)
    losses = []
    for step in range(60):
        blobs = torch.nn.functional.interpolate(torch.randn(16, 1, 4, 4, generator=g), size=16, mode="bilinear")
        y = torch.randint(2, (16,), generator=g)
        noise = torch.randn(16, 1, 16, 16, generator=g) * (1 - ab).sqrt().float().view(-1, 1, 1, 1)
        real = ab.sqrt().float().view(-1, 1, 1, 1) * blobs.tanh() + noise
        fake = (ab.sqrt().float().view(-1, 1, 1, 1) * (blobs.tanh() + checker) + noise).requires_grad_(True)
        before = [p.detach().clone() for p in disc.parameters()]
        term.generator_loss((fake, t, ab, {"y": y}), (real, t, ab, {"y": y})).backward()
        assert fake.grad is not None and all(p.grad is None for p in disc.parameters())
        assert all(torch.equal(a, b) for a, b in zip(before, disc.parameters()))
        term.after_step()
        losses.append(term.log_values()["d_loss"])
    assert losses[0] > 0.9 and sum(losses[-10:]) / 10 < 0.5, losses
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in original.items())


def test_the_adaptive_weight_balances_the_two_gradients_at_the_output():
    """weight x |d rec / d out| / |d gan / d out|: the GAN term's gradient at `out` has `weight` times the
    reconstruction's norm."""
    torch.manual_seed(0)
    term = AdversarialTerm(FeatureHead(4), lr=1e-3, weight=0.25, device=torch.device("cpu"), bf16=False)
    out = torch.randn(3, 4, 5, requires_grad=True)
    rec = 7.0 * out.square().mean()
    g = term.generator_loss((out * 2,), (torch.randn(3, 4, 5),), rec=rec, last=out)
    g_rec = torch.autograd.grad(rec, out, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g, out)[0]
    assert abs(float(g_gan.norm() / g_rec.norm()) - 0.25) < 1e-3


def test_the_discriminator_and_its_optimizer_survive_a_checkpoint():
    torch.manual_seed(0)
    a = AdversarialTerm(FeatureHead(4, num_classes=2), 1e-3, 1.0, torch.device("cpu"), False, adaptive=False)
    y = torch.tensor([0, 1])
    for _ in range(3):
        a.generator_loss((torch.randn(2, 4, 3), y), (torch.randn(2, 4, 3), y))
        a.after_step()
    b = AdversarialTerm(FeatureHead(4, num_classes=2), 1e-3, 1.0, torch.device("cpu"), False, adaptive=False)
    b.load_extra_state(a.extra_state())
    for pa, pb in zip(a.disc.parameters(), b.disc.parameters()):
        assert torch.equal(pa, pb)
    sa, sb = a.opt.state_dict()["state"], b.opt.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)


def test_the_feature_head_judges_per_position_and_by_class():
    head = FeatureHead(6, num_classes=2)
    f = torch.randn(3, 6, 2, 5)
    logits = head(f, torch.tensor([0, 1, 2]))       # 2: the null label, its own embedding
    assert logits.shape == (3, 10) and logits.dtype == torch.float32
    assert not torch.equal(head(f, torch.tensor([0, 0, 0])), head(f, torch.tensor([1, 1, 1])))
