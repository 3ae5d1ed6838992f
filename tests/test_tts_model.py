"""The acoustic model's pieces: monotonic alignment search against brute force, durations and the
length regulator, the losses, the decoder on the core; the vocoder-input check; MCD-DTW."""
import itertools
import math

import pytest
import torch

from multidiff.core.objective_base import GeneratorDraws
from multidiff.data.mel import MelConfig
from multidiff.data.mel_check import MelMismatch, check_same_mel, check_vocoder_mel
from multidiff.metrics.speech import K_MCD, mcd_aligned, mcd_dtw
from multidiff.models.tts import TTSModel, TTSModelConfig, generate_path, monotonic_alignment, sequence_mask
from multidiff.modalities.sections import DiffusionConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(encoder_channels=32, encoder_layers=1, encoder_ffn=64, prenet_layers=1, duration_channels=32,
            decoder_channels=[32, 32], n_mels=80)


def brute_force(logp: torch.Tensor, tx: int, ty: int) -> tuple[float, torch.Tensor]:
    """The best score and path over every monotonic alignment of tx tokens to ty frames (each token
    >= 1 frame): every composition of ty into tx positive durations."""
    best, best_path = -math.inf, None
    for cuts in itertools.combinations(range(1, ty), tx - 1):
        bounds = (0, *cuts, ty)
        path = torch.zeros(tx, ty)
        for i in range(tx):
            path[i, bounds[i]:bounds[i + 1]] = 1
        score = float((logp[:tx, :ty] * path).sum())
        if score > best:
            best, best_path = score, path
    return best, best_path


@pytest.mark.parametrize("seed", range(6))
def test_monotonic_alignment_search_is_the_best_alignment(seed):
    g = torch.Generator().manual_seed(seed)
    B, T_x, T_y = 4, 5, 9
    logp = torch.randn(B, T_x, T_y, generator=g) * 3
    x_len = torch.randint(1, T_x + 1, (B,), generator=g)
    y_len = torch.stack([torch.randint(int(x), T_y + 1, (1,), generator=g)[0] for x in x_len])
    path = monotonic_alignment(logp, x_len, y_len)
    for b in range(B):
        tx, ty = int(x_len[b]), int(y_len[b])
        best, best_path = brute_force(logp[b], tx, ty)
        assert float((logp[b] * path[b]).sum()) == pytest.approx(best, abs=1e-4)
        assert torch.equal(path[b, :tx, :ty], best_path)           # random scores: one best path
        assert path[b, tx:].sum() == 0 and path[b, :, ty:].sum() == 0  # nothing outside the item


def test_alignment_edge_cases():
    logp = torch.zeros(1, 3, 3)
    assert torch.equal(monotonic_alignment(logp, torch.tensor([3]), torch.tensor([3]))[0], torch.eye(3))
    one = monotonic_alignment(torch.randn(1, 1, 7), torch.tensor([1]), torch.tensor([7]))
    assert one.sum() == 7
    with pytest.raises(ValueError, match="at least as many frames as tokens"):
        monotonic_alignment(torch.zeros(1, 4, 3), torch.tensor([4]), torch.tensor([3]))


def test_generate_path_is_the_length_regulator():
    d = torch.tensor([[2., 1., 3.], [1., 4., 0.]])
    mask = sequence_mask(torch.tensor([3, 2]), 3).float()
    path = generate_path(d, mask)
    assert path.shape == (2, 3, 6)
    assert torch.equal(path.sum(-1), d * mask)
    assert torch.equal(path[0].argmax(0), torch.tensor([0, 0, 1, 2, 2, 2]))
    assert path[1, :, 5].sum() == 0 and torch.equal(path[1].sum(0)[:5], torch.ones(5))


def _batch(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 170, (B, 12), generator=g)
    x_len = torch.tensor([12, 9, 5][:B])
    y_len = torch.tensor([40, 31, 20][:B])
    mel = torch.rand(B, 80, 40, generator=g) * sequence_mask(y_len, 40)[:, None]
    return ids, x_len, mel, y_len


def test_durations_prior_and_decoder_shapes():
    model = TTSModel(TTSModelConfig(**TINY, n_speakers=2)).eval()
    ids, x_len, _, _ = _batch()
    spk = torch.tensor([0, 1, 0])
    d, mu_x, x_mask, _ = model.predict_durations(ids, x_len, spk)
    assert d.shape == (3, 12) and mu_x.shape == (3, 80, 12) and x_mask.shape == (3, 1, 12)
    assert bool((d[:, :5] >= 1).all()) and d[1, 9:].sum() == 0 and d[2, 5:].sum() == 0
    mu_y, y_mask, frames, d2 = model.prior(ids, x_len, spk)
    assert torch.equal(frames, d.sum(1).long()) and mu_y.shape == (3, 80, int(frames.max()))
    assert torch.equal(y_mask[:, 0].sum(1).long(), frames)
    slow, _, slow_frames, _ = model.prior(ids, x_len, spk, length_scale=2.0)
    assert bool((slow_frames >= 2 * frames - 12).all()) and bool((slow_frames > frames).all())
    out = model(torch.randn_like(mu_y), torch.full((3,), 500.0), mu=mu_y, mask=y_mask, spk=spk)
    assert out.shape == mu_y.shape and out[~y_mask.bool().expand_as(out)].abs().max() == 0


def test_decoder_output_does_not_depend_on_padding():
    torch.manual_seed(0)
    model = TTSModel(TTSModelConfig(**{**TINY, "decoder_channels": [32, 32, 32]})).eval()
    torch.nn.init.normal_(model.decoder.out.weight)  # (zero at init)
    x = torch.randn(2, 80, 23)
    mu = torch.randn(2, 80, 23)
    mask = sequence_mask(torch.tensor([23, 13]), 23)[:, None].float()
    batched = model(x, torch.tensor([100.0, 100.0]), mu=mu, mask=mask)
    alone = model(x[1:, :, :13], torch.tensor([100.0]), mu=mu[1:, :, :13], mask=mask[1:, :, :13])
    assert torch.allclose(batched[1:, :, :13], alone, atol=1e-5)


@pytest.mark.parametrize("objective", ["flow", "vp", "edm"])
def test_losses_train_every_part(objective):
    torch.manual_seed(0)
    model = TTSModel(TTSModelConfig(**TINY, segment_frames=16))
    ids, x_len, mel, y_len = _batch()
    obj = DiffusionConfig(objective=objective, prediction="v" if objective == "vp" else "eps").build_objective()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = None
    for step in range(15):
        out = model(None, losses=dict(ids=ids, x_lengths=x_len, mel=mel, y_lengths=y_len, objective=obj,
                                      draws=GeneratorDraws(3, torch.Generator().manual_seed(step)),
                                      offsets=torch.rand(3)))
        assert set(out) == {"duration", "prior", "diffusion"} and all(torch.isfinite(v) for v in out.values())
        loss = sum(out.values())
        if first is None:
            first = {k: float(v.detach()) for k, v in out.items()}
            loss.backward()
            grads = {n.split(".")[0]: p.grad is not None and bool(p.grad.abs().sum() > 0)
                     for n, p in model.named_parameters()}
            assert grads["encoder"] and grads["decoder"]
        else:
            loss.backward()
        opt.step()
        opt.zero_grad()
    assert float(out["duration"].detach()) < first["duration"] and float(out["prior"].detach()) < first["prior"]


def test_vocoder_mel_check_explains_tacotron_mels():
    cfg = MelConfig.preset("lmnt", 22050, 256)
    tacotron = torch.rand(80, 50) * 8 - 4  # Tacotron 2's symmetric [-4, 4] (lmnt-com/diffwave #26)
    with pytest.raises(MelMismatch) as e:
        check_vocoder_mel(tacotron, cfg, "mel 'x.npy'")
    msg = str(e.value)
    assert "[-4, 4]" in msg and "[0, 1]" in msg and "(x + 4) / 8" in msg and "86.1 frames/s" in msg
    check_vocoder_mel(torch.rand(80, 50), cfg)  # lmnt's own range passes
    check_vocoder_mel(torch.rand(80, 50) * 1.4 - 0.2, cfg, predicted=True)  # a model's strays, within slack
    with pytest.raises(MelMismatch, match="natural-log"):
        check_vocoder_mel(torch.rand(80, 50) * 10 - 11.5, cfg)
    with pytest.raises(MelMismatch, match="transposed"):
        check_vocoder_mel(torch.rand(50, 80), cfg)
    hifigan = MelConfig.preset("hifigan", 22050, 256)
    check_vocoder_mel(torch.rand(80, 50) * 10 - 11.5, hifigan)
    with pytest.raises(MelMismatch, match="hop_length 256 vs 128.*data.hop_length = 128"):
        check_same_mel(cfg, MelConfig.preset("lmnt", 22050, 128), "tts", "voc")


def test_mcd_dtw():
    sr = 22050
    t = torch.arange(sr) / sr
    a = 0.5 * torch.sin(2 * math.pi * 220 * t) * torch.sin(math.pi * t)
    assert mcd_dtw(a, a, sr) == 0.0
    t2 = torch.arange(int(1.3 * sr)) / sr  # the same tone, its loudness contour 1.3x slower
    stretched = 0.5 * torch.sin(2 * math.pi * 220 * t2) * torch.sin(math.pi * t2 / 1.3)
    other = 0.5 * torch.sin(2 * math.pi * 660 * t) * torch.sin(math.pi * t) + 0.01 * torch.randn(sr)
    assert mcd_dtw(a, stretched, sr) < 0.3 * mcd_dtw(a, other, sr)  # DTW forgives timing, not spectra


def test_mcd_aligned_against_its_closed_form():
    """c_m is the 2/N cosine expansion of the log mel: adding A cos(pi m (n + 1/2) / N) to every frame moves c_m by
    exactly A and nothing else (MCD = K |A|); a gain (a constant in the log) moves only c_0, which MCD leaves out."""
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(80, 40, generator=g) - 4
    n = torch.arange(80, dtype=torch.float64)[:, None]
    assert mcd_aligned(ref, ref) == 0.0
    assert mcd_aligned(ref, ref + 3.0) == pytest.approx(0.0, abs=1e-4)
    bump = (0.7 * torch.cos(math.pi * 5 * (n + 0.5) / 80)).float()
    assert mcd_aligned(ref, ref + bump) == pytest.approx(K_MCD * 0.7, rel=1e-4)
    silent = ref.clone()
    silent[:, :5] = -40.0  # 5 leading frames far below the loudest: left out of the reference and the estimate
    assert mcd_aligned(silent, torch.cat([ref[:, :5] + 9, ref[:, 5:]], 1)) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        mcd_aligned(ref, ref[:, 1:])
