"""Scoring generated speech (audio_uncond_eval.py): a classifier on the mels of real spoken digits."""
import torch

from multidiff.data.audio import AudioData, build_audio_dataset
from multidiff.data.mel import MelConfig, mel_spectrogram
from multidiff.metrics import digit_metrics, train_digit_classifier
from multidiff.evaluation.audio_uncond import IMAGE_SIZE, classifier_epochs, mel_images

from helpers.spoken_digits import spoken_digits_sc09

VOICES = ["en", "en-us", "en-gb+f2", "en-gb-scotland+m3", "en-029+m4", "en-us+m1", "en-gb-x-rp+f1", "en-us-nyc+m2",
          "en-gb-x-gbclan+f3", "en-us+f4", "en-gb-x-gbcwmd+m5"]   # the last one is held out


def test_mel_classifier_tells_held_out_speech_from_noise(tmp_path):
    """Trained on ten espeak voices, the classifier must recognise the ten words said by an eleventh,
    score them far closer to the train clips than noise of speech-like loudness, and be confident on
    them but not on the noise: what makes its FD / IS / accuracy meaningful for generated clips."""
    root = spoken_digits_sc09(tmp_path / "sc09", VOICES, held_out=[VOICES[-1]])
    cfg = AudioData(layout="sc09", root=str(root), sample_rate=16000, crop_frames=0)
    train, held = build_audio_dataset(cfg, "train"), build_audio_dataset(cfg, "eval")
    images = lambda ds: mel_images([ds[i][1] for i in range(len(ds))], "lmnt")
    labels = lambda ds: torch.tensor([ds[i][2] for i in range(len(ds))])
    ref = images(train)
    assert ref.shape == (100, 1, IMAGE_SIZE, IMAGE_SIZE) and ref.min() >= -1 and ref.max() <= 1
    clf = train_digit_classifier(ref, labels(train), size=IMAGE_SIZE, epochs=classifier_epochs(len(ref), 12), seed=0,
                                 threads=None)
    real = images(held)
    with torch.no_grad():
        acc = (clf(real).argmax(1) == labels(held)).double().mean().item()
    clips = torch.stack([held[i][0] for i in range(len(held))])
    noise = torch.randn(clips.shape, generator=torch.Generator().manual_seed(0)) * clips.std()
    fake = mel_images(mel_spectrogram(noise, MelConfig(sample_rate=16000)), "lmnt")
    m_real, m_noise = digit_metrics(clf, real, ref), digit_metrics(clf, fake, ref)
    print(f"held-out voice: accuracy {acc:.2f}; real / noise: " + ", ".join(   # the sc09 README quotes these
        f"{k} {m_real[k]:.2f} / {m_noise[k]:.2f}" for k in ("fd", "inception_score", "confidence")))
    assert acc >= 0.7, acc
    assert m_real["fd"] < 0.5 * m_noise["fd"], (m_real["fd"], m_noise["fd"])
    assert m_real["confidence"] > m_noise["confidence"] + 0.2, (m_real["confidence"], m_noise["confidence"])
    assert m_real["inception_score"] > 2 * m_noise["inception_score"]
