"""Mel-shaped noise priors (models/diffwave/noise_prior.py): PriorGrad's frame energy and the SpecGrad-style
spectral envelope, each checked against its paper's training loss and fast sampler written out in x."""
import math

import pytest
import torch

from multidiff.core import Schedule, diffusion_loss
from multidiff.data.mel import MelConfig, mel_spectrogram
from multidiff.models.diffwave import DiffWave
from multidiff.models.diffwave.noise_prior import MelEnergyPrior, MelEnvelopePrior, NoisePriorModel
from multidiff.modalities.audio import AUDIO, FAST_BETAS
from multidiff.modalities.base import Trained
from multidiff.pipelines.vocode import synthesize
from multidiff.modalities.sections import DiffusionConfig

MEL = MelConfig(hop_length=16, win_length=64, n_fft=64, n_mels=8, sample_rate=8000)


def speech_like(frames: int, seed: int = 0) -> torch.Tensor:
    """A tone whose loudness rises from silence, so frames span the whole energy range."""
    g = torch.Generator().manual_seed(seed)
    n = frames * MEL.hop_length
    t = torch.arange(n) / MEL.sample_rate
    env = torch.linspace(0, 1, n) ** 2
    return (0.8 * env * torch.sin(2 * math.pi * 440 * t) + 1e-4 * torch.randn(n, generator=g))[None, None]


def tiny_net() -> DiffWave:
    torch.manual_seed(0)
    net = DiffWave(residual_channels=8, residual_layers=3, dilation_cycle=2, n_mels=MEL.n_mels,
                   hop_length=MEL.hop_length, max_steps=50)
    torch.nn.init.normal_(net.output_projection.weight, std=0.3)  # not the zero init: a net that answers
    return net


@pytest.fixture
def fitted():
    wav = speech_like(40)
    mel = mel_spectrogram(wav, MEL)
    return MelEnergyPrior(MEL, std_min=0.1).fit([mel[0]]), wav, mel


def test_prior_spans_floor_to_one_and_covers_each_hop(fitted):
    prior, wav, mel = fitted
    s = prior(mel)
    assert s.shape == wav.shape
    assert float(s.min()) == pytest.approx(0.1) and float(s.max()) == pytest.approx(1.0)
    frames = s[0, 0].reshape(-1, MEL.hop_length)
    assert torch.equal(frames, frames[:, :1].expand_as(frames))  # one value per frame's samples
    e = prior.energy(mel)[0]
    assert e.shape == (mel.shape[-1],)
    lo, hi = prior.energy_range.tolist()
    assert torch.allclose(frames[:, 0], ((e - lo) / (hi - lo)).clamp(min=0.1))
    # the energy is PriorGrad's: sqrt of the summed mel magnitudes (lmnt mel: 10 ** ((100 m - 80) / 20))
    assert torch.allclose(e, (10 ** ((mel[0] * 100 - 80) / 20)).sum(0).sqrt())


def test_prior_refuses_use_before_fit_and_silent_training_data():
    prior = MelEnergyPrior(MEL)
    with pytest.raises(RuntimeError, match="fit"):
        prior(torch.zeros(1, MEL.n_mels, 4))
    with pytest.raises(ValueError, match="one energy throughout"):
        prior.fit([torch.zeros(MEL.n_mels, 4)])
    with pytest.raises(ValueError, match="prior_std_min"):
        MelEnergyPrior(MEL, std_min=0)


def test_energy_range_travels_in_the_state_dict(fitted):
    prior = fitted[0]
    model = NoisePriorModel(tiny_net(), prior)
    fresh = NoisePriorModel(tiny_net(), MelEnergyPrior(MEL))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.prior.energy_range, prior.energy_range)


def test_loss_with_the_priors_noise_is_priorgrads_weighted_loss(fitted):
    """PriorGrad: x_t = a x0 + sigma s eps, loss = mean(((net(x_t) - s eps) / s)^2)."""
    prior, wav, mel = fitted
    net, sched = tiny_net(), Schedule.linear(50, 1e-4, 0.05)
    x0 = torch.cat([wav, 0.5 * wav])
    mel2 = torch.cat([mel, mel_spectrogram(0.5 * wav, MEL)])
    t = torch.tensor([3.0, 41.0], dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    s = prior(mel2)
    a = sched.alphas_cumprod[t.long()].sqrt().float()[:, None, None]
    sig = (1 - sched.alphas_cumprod[t.long()]).sqrt().float()[:, None, None]
    with torch.no_grad():
        reference = (((net(a * x0 + sig * s * eps, t, mel=mel2) - s * eps) / s) ** 2).mean()
        ours = diffusion_loss(NoisePriorModel(net, prior), sched, x0, "eps", t=t, noise=prior.color(eps, mel2),
                              error_map=lambda r: prior.whiten(r, mel2), cond={"mel": mel2})
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)


def fitted_envelope(wav, mel, floor=0.05):
    return MelEnvelopePrior(MEL, floor).fit([mel[0]])


@pytest.mark.parametrize("kind", ["mel_energy", "mel_envelope"])
def test_fast_sampling_matches_the_papers_x_space_sampler(fitted, kind):
    """PriorGrad's / SpecGrad's fast sampler (PriorGrad's learner.predict, without the per-step clamp):
    x_N = L z, x_{n-1} = (x_n - beta_n / sqrt(1 - abar_n) net(x_n, t_n)) / sqrt(alpha_n) + sigma_n L z_n
    with the posterior sigma_n, at the aligned fractional training steps t_n; L = diag(s) or the filter."""
    energy, wav, mel = fitted
    prior = energy if kind == "mel_energy" else fitted_envelope(wav, mel)
    net = tiny_net()
    sections = {"diffusion": DiffusionConfig(timesteps=50, beta_start=1e-4, beta_end=0.05)}
    model = NoisePriorModel(net, prior)
    with torch.no_grad():
        ours = synthesize(Trained(AUDIO, sections, model, None), mel, 6, torch.device("cpu"), False,
                          torch.Generator().manual_seed(7), sampler="ddpm", n_samples=wav.shape[-1])
        g = torch.Generator().manual_seed(7)
        beta = torch.tensor(FAST_BETAS, dtype=torch.float64)
        alpha, abar = 1 - beta, torch.cumprod(1 - beta, 0)
        steps = Schedule.linear(50, 1e-4, 0.05).align_betas(FAST_BETAS)
        x = prior.color(torch.randn(wav.shape, generator=g), mel)
        for n in range(len(FAST_BETAS) - 1, -1, -1):
            eps = net(x, steps[n:n + 1].float(), mel=mel)
            x = (x - float(beta[n] / (1 - abar[n]).sqrt()) * eps) / float(alpha[n].sqrt())
            if n > 0:
                sigma = float(((1 - abar[n - 1]) / (1 - abar[n]) * beta[n]).sqrt())
                x = x + sigma * prior.color(torch.randn(wav.shape, generator=g), mel)
    assert torch.allclose(ours, x.clamp(-1, 1), atol=1e-5)
    # and the prior shapes what comes out: the silent start is quieter than the loud end
    quiet, loud = ours[..., :MEL.hop_length * 8].std(), ours[..., -MEL.hop_length * 8:].std()
    assert loud > 3 * quiet


def test_envelope_prior_is_the_mels_envelope_scaled_to_the_loudest_frame(fitted):
    _, wav, mel = fitted
    prior = fitted_envelope(wav, mel, floor=0.05)
    m = prior(mel)
    assert m.shape == (1, MEL.n_fft // 2 + 1, mel.shape[-1] + 1)
    assert float(m.min()) == pytest.approx(0.05)
    assert float(prior.envelope(mel).mul(prior.scale).square().mean(1).sqrt().max()) == pytest.approx(1.0)
    # the 440 Hz tone's bins carry the gain: the loudest frame peaks there
    freqs = torch.arange(m.shape[1]) * MEL.sample_rate / MEL.n_fft
    assert abs(float(freqs[m[0, :, -2].argmax()]) - 440) < 2 * MEL.sample_rate / MEL.n_fft
    # colored noise has that envelope: its mel follows the target's band by band
    z = torch.randn(8, 1, wav.shape[-1], generator=torch.Generator().manual_seed(2))
    colored = prior.color(z, mel.expand(8, -1, -1))
    got = mel_spectrogram(colored, MEL)[:, :, -10:].mean(0)
    want = mel_spectrogram(wav, MEL)[0, :, -10:]
    assert torch.corrcoef(torch.stack([got.flatten(), want.flatten()]))[0, 1] > 0.9
    # whiten undoes color up to the STFT's overlap
    back = prior.whiten(colored, mel.expand(8, -1, -1))
    assert ((back - z).norm() / z.norm()) < 0.3


def test_envelope_prior_refuses_use_before_fit_and_silence():
    prior = MelEnvelopePrior(MEL)
    with pytest.raises(RuntimeError, match="fit"):
        prior(torch.zeros(1, MEL.n_mels, 4))
    with pytest.raises(ValueError, match="silent"):
        prior.fit([torch.zeros(MEL.n_mels, 4) - 10])
    with pytest.raises(ValueError, match="prior_std_min"):
        MelEnvelopePrior(MEL, floor=0)


def test_config_refuses_a_prior_without_a_mel():
    with pytest.raises(ValueError, match="n_mels > 0"):
        DiffWave(n_mels=0, noise_prior="mel_energy")
    with pytest.raises(ValueError, match="noise_prior"):
        DiffWave(noise_prior="gaussian")
