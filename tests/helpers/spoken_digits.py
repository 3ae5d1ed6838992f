"""Real spoken digits for tests: the ten SC09 words said by espeak-ng, written in the SC09 layout."""
import subprocess
from pathlib import Path

import soundfile as sf

from multidiff.data.audio import read_audio
from multidiff.data.audio_layouts import SC09_WORDS


def spoken_digits_sc09(root: Path, voices, held_out=(), sample_rate: int = 16000) -> Path:
    """root/<word>/<voice>_nohash_0.wav, one clip per word and voice (1 s, padded or cut); the clips
    of the `held_out` voices are listed in testing_list.txt (SC09's eval split), none in
    validation_list.txt."""
    tmp = root / ".raw"
    tmp.mkdir(parents=True, exist_ok=True)
    testing = []
    for word in SC09_WORDS:
        (root / word).mkdir(exist_ok=True)
        for k, voice in enumerate(voices):
            raw = tmp / f"{word}{k}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), word], check=True)
            x = read_audio(raw, sample_rate)[0][:sample_rate]
            name = f"{word}/spk{k}_nohash_0.wav"
            sf.write(root / name, x.numpy(), sample_rate)
            if voice in held_out:
                testing.append(name)
    (root / "validation_list.txt").write_text("")
    (root / "testing_list.txt").write_text("".join(f"{n}\n" for n in testing))
    return root
