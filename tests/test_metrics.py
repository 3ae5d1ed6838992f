"""Metrics: Frechet distance, digit-classifier features, PSNR/SSIM, Inception loading."""
import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.datasets import load_digits

from multidiff.metrics import (
    InceptionFeatures, digit_metrics, feature_stats, frechet_distance, inception_scores, load_classifier, psnr,
    save_classifier, ssim, ssim_map, train_digit_classifier,
)
from multidiff.metrics.inception import WEIGHTS_NAME


def rng(seed=0):
    return np.random.default_rng(seed)


def random_spd(d, seed):
    a = rng(seed).standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------- Frechet distance

def test_frechet_closed_form_for_diagonal_gaussians():
    r = rng(1)
    mu1, mu2 = r.standard_normal(8), r.standard_normal(8)
    a, b = r.uniform(0.1, 3, 8), r.uniform(0.1, 3, 8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_scipy_sqrtm_on_random_spd():
    for seed in range(3):
        s1, s2 = random_spd(16, seed), random_spd(16, seed + 10)
        mu1, mu2 = rng(seed).standard_normal(16), rng(seed + 5).standard_normal(16)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
        ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
        got = frechet_distance(torch.tensor(mu1), torch.tensor(s1), mu2, s2)  # tensors or arrays
        assert isinstance(got, float) and got == pytest.approx(ref, rel=1e-8)


def test_frechet_identical_is_zero_and_symmetric():
    feats = torch.tensor(rng(2).standard_normal((50, 12)))
    mu, s = feature_stats(feats)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0, abs=1e-9)
    mu2, s2 = feature_stats(feats[:25] * 1.5 + 0.3)
    assert frechet_distance(mu, s, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu, s), rel=1e-9)


def test_frechet_singular_covariances_stay_real_and_exact():
    # rank-1 covariances along one direction: the distance reduces to the 1-D closed form
    u = rng(3).standard_normal(10)
    u /= np.linalg.norm(u)
    d = frechet_distance(np.zeros(10), 4 * np.outer(u, u), u, 9 * np.outer(u, u))
    assert d == pytest.approx(1 + (3 - 2) ** 2, abs=1e-6)
    # fewer samples than dimensions: singular, but finite and ~0 against itself
    mu, s = feature_stats(rng(4).standard_normal((5, 64)))
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0, abs=1e-6)


def test_feature_stats_match_numpy():
    x = rng(5).standard_normal((40, 6))
    mu, s = feature_stats(x)
    assert mu.dtype == s.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.numpy(), np.cov(x, rowvar=False), rtol=1e-12)


def test_frechet_bad_input_is_named():
    with pytest.raises(ValueError, match="NaN/inf"):
        feature_stats(torch.full((4, 3), float("nan")))
    with pytest.raises(ValueError, match=r"\[N, D\] with N >= 2"):
        feature_stats(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------- PSNR / SSIM

def pair(shape, seed=0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1
    return a, (a + noise * torch.randn(*shape, generator=g, dtype=torch.float64)).clamp(-1, 1)


def sk_ssim(a, b, **kw):
    return structural_similarity(a, b, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=2.0, **kw)


@pytest.mark.parametrize("channels", [1, 3])
def test_psnr_ssim_match_skimage(channels):
    a, b = pair((3, channels, 32, 24))
    got_ssim, got_psnr, got_map = ssim(a, b), psnr(a, b), ssim_map(a, b)
    assert got_ssim.shape == got_psnr.shape == (3,)
    for i in range(3):
        ref, ref_map = sk_ssim(a[i].numpy(), b[i].numpy(), full=True)
        assert got_ssim[i].item() == pytest.approx(ref, abs=1e-6)
        np.testing.assert_allclose(got_map[i].numpy(), ref_map, atol=1e-6)
        ref_psnr = peak_signal_noise_ratio(a[i].numpy(), b[i].numpy(), data_range=2.0)
        assert got_psnr[i].item() == pytest.approx(ref_psnr, abs=1e-6)


def test_identical_images():
    a, _ = pair((2, 1, 16, 16))
    assert torch.allclose(ssim(a, a), torch.ones(2, dtype=torch.float64))
    assert torch.isinf(psnr(a, a)).all()
    assert torch.allclose(ssim(a[..., :8, :8], a[..., :8, :8], window=7), torch.ones(2, dtype=torch.float64))


def test_masked_metrics_score_only_the_filled_region():
    a, b = pair((2, 3, 32, 32), seed=1)
    mask = torch.ones(2, 1, 32, 32)
    mask[..., 8:20, 10:26] = 0  # the hole a model filled
    hole = (mask == 0).expand_as(a)
    # differences only inside the hole: PSNR over the hole pixels alone
    b_in = torch.where(hole, b, a)
    mse = ((a - b_in) ** 2)[hole].view(2, -1).mean(1)
    assert torch.allclose(psnr(a, b_in, mask), 10 * torch.log10(4 / mse))
    assert (psnr(a, b_in, mask) < psnr(a, b_in)).all()  # whole-image PSNR is diluted by known pixels
    # differences only in the known region do not count
    assert torch.isinf(psnr(a, torch.where(hole, a, b), mask)).all()
    # SSIM: the full-size map averaged over the hole
    got = ssim(a, b_in, mask)
    for i in range(2):
        _, ref_map = sk_ssim(a[i].numpy(), b_in[i].numpy(), full=True)
        assert got[i].item() == pytest.approx(ref_map[hole[i].numpy()].mean(), abs=1e-6)


def test_image_quality_bad_input_is_named():
    a, b = pair((2, 1, 16, 16))
    with pytest.raises(ValueError, match="no filled region"):
        psnr(a, b, torch.ones(2, 1, 16, 16))
    with pytest.raises(ValueError, match="does not broadcast"):
        ssim(a, b, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="smaller than the 11x11 window; pass window=7"):
        ssim(a[..., :8, :8], b[..., :8, :8])
    with pytest.raises(ValueError, match=r"\[B, C, H, W\] of the same shape"):
        psnr(a, b[:1])


# ---------------------------------------------------------------- digit classifier

@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8 - 1  # 0..16 -> [-1, 1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n = int(0.8 * len(x))
    return x[perm[:n]], y[perm[:n]], x[perm[n:]], y[perm[n:]]


@pytest.fixture(scope="module")
def clf(digits):
    x_train, y_train, _, _ = digits
    return train_digit_classifier(x_train, y_train, epochs=6, seed=0)


def accuracy(clf, x, y):
    with torch.no_grad():
        return (clf(x).argmax(1) == y).float().mean().item()


def test_classifier_accuracy_on_held_out_digits(clf, digits):
    _, _, x_test, y_test = digits
    assert accuracy(clf, x_test, y_test) >= 0.95
    # the same classifier scores other resolutions (inputs are resized to its working size)
    x16 = F.interpolate(x_test, size=(16, 16), mode="bilinear", antialias=True)
    assert accuracy(clf, x16, y_test) >= 0.95
    assert clf.features(x_test[:4]).shape == (4, 128)


def test_digit_metrics_separate_real_from_junk(clf, digits):
    x_train, y_train, x_test, _ = digits
    ref = x_train[:600]
    g = torch.Generator().manual_seed(1)
    real = digit_metrics(clf, x_test, ref)
    noise = digit_metrics(clf, torch.randn(200, 1, 32, 32, generator=g).clamp(-1, 1), ref)
    blank = digit_metrics(clf, -torch.ones(200, 1, 32, 32), ref)
    assert real["fd"] < 20 and noise["fd"] > 20 * real["fd"] and blank["fd"] > 20 * real["fd"]
    assert real["confidence"] > 0.9 and noise["confidence"] < 0.5
    assert real["coverage"] == 1.0
    assert len(real["class_counts"]) == 10 and sum(real["class_counts"]) == len(x_test)
    threes = x_train[y_train == 3][:60]
    single = digit_metrics(clf, threes, ref)
    assert single["coverage"] == pytest.approx(0.1) and single["class_counts"][3] >= 55


def test_inception_scores_closed_forms():
    K = 4
    onehot = torch.eye(K).repeat(3, 1)                       # confident, evenly spread, 3 per class
    s = inception_scores(onehot)
    assert s["inception_score"] == pytest.approx(K) and s["modified_inception_score"] == pytest.approx(1.0)
    same = torch.tensor([[0.7, 0.2, 0.1]]).repeat(5, 1)      # identical predictions: no information
    assert inception_scores(same)["inception_score"] == pytest.approx(1.0)
    # two samples of class 0 and one of class 1: mIS averages KL over the pair of class 0 only
    p = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], dtype=torch.float64)
    kl = lambda a, b: float((a * (a / b).log()).sum())
    marg = p.mean(0)
    s = inception_scores(p)
    assert s["inception_score"] == pytest.approx(np.exp(np.mean([kl(q, marg) for q in p])))
    assert s["modified_inception_score"] == pytest.approx(np.exp((kl(p[0], p[1]) + kl(p[1], p[0])) / 2))
    assert np.isnan(inception_scores(torch.eye(3))["modified_inception_score"])  # no class has two samples


def test_classifier_save_load_roundtrip(clf, digits, tmp_path):
    x = digits[2][:32]
    path = tmp_path / "sub" / "digits.safetensors"
    save_classifier(clf, path)
    assert [p.name for p in path.parent.iterdir()] == ["digits.safetensors"]  # no temp file left
    loaded = load_classifier(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), clf(x))
        assert torch.equal(loaded.features(x), clf.features(x))


def test_training_is_deterministic(digits):
    x, y = digits[0][:128], digits[1][:128]
    a = train_digit_classifier(x, y, epochs=1, seed=3).state_dict()
    b = train_digit_classifier(x, y, epochs=1, seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_digit_bad_input_is_named(clf, digits, tmp_path):
    x = digits[2][:8]
    with pytest.raises(ValueError, match=r"must be in \[-1, 1\]; rescale"):
        digit_metrics(clf, (x + 1) * 127.5, x)
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        digit_metrics(clf, x.expand(-1, 3, -1, -1), x)
    with pytest.raises(FileNotFoundError, match="does not exist; train one"):
        load_classifier(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_classifier(junk)


# ---------------------------------------------------------------- Inception

@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    from torchvision.models import inception_v3

    # torchvision's layout, AuxLogits included, with random weights (no download possible)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path_factory.mktemp("inception") / WEIGHTS_NAME
    torch.save(net.state_dict(), path)
    return path


def test_inception_features_from_local_weights(inception_file):
    feat = InceptionFeatures(inception_file)
    with torch.no_grad():
        rgb = feat(torch.rand(2, 3, 32, 32) * 2 - 1)
        gray = feat(torch.rand(1, 1, 28, 28) * 2 - 1)
    assert rgb.shape == (2, 2048) and gray.shape == (1, 2048)
    assert torch.isfinite(rgb).all() and torch.isfinite(gray).all()
    assert not feat.train().training  # stays in eval mode


def test_inception_bad_weights_are_named(tmp_path, inception_file):
    with pytest.raises(FileNotFoundError, match=f"not found at .*{WEIGHTS_NAME}.*download"):
        InceptionFeatures(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=f"cannot be read.*{WEIGHTS_NAME}"):
        InceptionFeatures(garbage)
    partial = tmp_path / "partial.pth"
    state = torch.load(inception_file, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("Mixed_7c")}, partial)
    with pytest.raises(ValueError, match="missing and 0 unexpected keys"):
        InceptionFeatures(partial)
