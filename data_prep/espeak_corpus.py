"""Build a small speech corpus in LJSpeech's layout by speaking sentences with espeak-ng.

    python -m data_prep.espeak_corpus --out data/espeak --n 300

out/wavs/ESP-0001.wav ...    22050 Hz mono 16-bit, one utterance each
out/metadata.csv             id|text|normalized text (LJSpeech's format; the text has no digits or
                             abbreviations, so both columns are the same)
out/utterances.csv           id|voice|speed|pitch|split, how each clip was made
out/splits/{train,dev,eval}.txt
out/corpus.json              the options; a re-run with other options into the same --out is refused

Splits measure generalization: ~10% of the sentences are held out. "train" = training voices x seen
sentences; "dev" = training voices x held-out sentences; "eval" = held-out voices (their accent and
their variant both unseen) x held-out sentences. Speed and pitch vary per utterance; a quarter of
the texts join two sentences, for longer clips and more distinct texts.

Deterministic for a given --seed and options; idempotent: finished wavs are kept (each is written
to a temporary name and renamed, so a killed run resumes where it stopped), the text files are
rewritten only when their content changes. Needs Debian's espeak-ng (apt-get install espeak-ng).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from multidiff.utils import atomic_path, write_text
from data_prep import PrepError, run_stage

SAMPLE_RATE = 22050
TRAIN_VOICES = ("en-us+m1", "en-us+f2", "en-gb+m3", "en-gb+f1", "en-gb-scotland+m2", "en-gb-x-rp+f3")
EVAL_VOICES = ("en-029+m4", "en-gb-x-gbclan+f4")  # Caribbean and Lancaster accents, variants unused above
SPEED = (135, 185)  # words per minute (espeak-ng's default is 175)
PITCH = (30, 70)    # 0..99 (default 50)
VERSION = 1

SENTENCES = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.",
    "Where did you leave the keys to the old shed?",
    "Could you please close the window before it rains?",
    "Nobody expected the quiet librarian to win the chess tournament.",
    "My grandmother keeps a jar of buttons on the kitchen shelf.",
    "The train to the coast leaves at noon every Sunday.",
    "Bright lanterns swayed above the crowded night market.",
    "Why would anyone paint a bicycle bright orange?",
    "The committee postponed its decision until the spring.",
    "Thick fog rolled over the harbour just after dawn.",
    "She whispered the answer so that only the teacher could hear.",
    "Measure twice and cut once, the carpenter reminded us.",
    "A flock of geese flew south over the frozen lake.",
    "Please remember to water the tomatoes while I am away.",
    "The museum opens late on the first Friday of each month.",
    "He tuned the violin carefully before the concert began.",
    "Heavy rain flooded the narrow streets of the old town.",
    "Is this the road that leads to the lighthouse?",
    "The recipe calls for flour, sugar, butter and two eggs.",
    "Our neighbour's dog barks whenever the postman arrives.",
    "The astronaut described the silence of space as overwhelming.",
    "What a wonderful surprise to see you here!",
    "The children built a sandcastle with a deep moat.",
    "A sudden gust of wind scattered the papers across the floor.",
    "The old clock in the hallway chimed twelve times.",
    "They argued about politics until well past midnight.",
    "The scientist peered through the microscope in disbelief.",
    "Fresh bread smells better than almost anything else.",
    "The pilot announced a short delay because of the weather.",
    "Would you rather climb a mountain or sail across an ocean?",
    "The garden was full of roses, tulips and lavender.",
    "Jazz musicians often improvise long and winding solos.",
    "The thief escaped through a window on the second floor.",
    "Every morning the baker wakes up long before sunrise.",
    "The lecture on volcanoes was surprisingly entertaining.",
    "A thin layer of ice covered the puddles on the path.",
    "Turn left at the church and then keep going straight.",
    "The kitten chased a ball of yarn under the sofa.",
    "Economists disagree about the causes of the recession.",
    "Quick, somebody grab the umbrella before it blows away!",
    "The village celebrates the harvest with music and dancing.",
    "He could not remember where he had parked the car.",
    "The orchestra rehearsed the symphony for three long weeks.",
    "Shadows lengthened as the afternoon turned into evening.",
    "The journalist asked the mayor a very pointed question.",
    "Zebras and giraffes grazed peacefully on the open plain.",
    "Thank you for the lovely flowers and the kind note.",
    "The engine sputtered, coughed, and finally came to life.",
    "Few people know that octopuses have three hearts.",
    "The hikers reached the summit just as the clouds parted.",
    "Never judge a book by its cover, my father used to say.",
    "The students gathered in the hall for the announcement.",
    "A gentle breeze carried the scent of pine through the valley.",
    "The plumber fixed the leaking pipe in under an hour.",
    "Did the package arrive on time, or was it delayed again?",
    "Thunder rumbled in the distance as the storm approached.",
    "The chef sprinkled fresh herbs over the steaming soup.",
    "Owls hunt silently through the woods at night.",
    "The judge listened patiently to both sides of the argument.",
    "We watched the fireworks from the roof of the building.",
    "Her laughter echoed through the empty corridors.",
    "The ferry crossed the choppy water with some difficulty.",
    "Vegetables taste best when they are freshly picked.",
    "The detective noticed a faint smudge on the glass.",
    "How many languages can your cousin actually speak?",
    "The marathon runners were cheered on by thousands of fans.",
    "A rainbow appeared over the hills after the shower.",
    "The architect sketched a bold design for the new bridge.",
    "Please speak a little louder, the room is very noisy.",
    "The squirrel buried acorns all over the back yard.",
    "Ancient maps often showed sea monsters in unknown waters.",
    "The nurse checked the patient's temperature every hour.",
    "Yellow leaves drifted slowly down onto the pavement.",
    "The comedian's jokes fell completely flat that evening.",
    "Which of these paintings do you like the most?",
    "The blacksmith hammered the glowing iron into shape.",
    "Soft music played quietly in the background of the cafe.",
    "The expedition set off across the desert at first light.",
    "Good judgment comes from experience, and experience from bad judgment.",
    "The volunteers cleaned the beach from one end to the other.",
    "Whales sing complex songs that travel for many miles.",
    "The photographer waited hours for the perfect light.",
    "I wonder whether the bakery on the corner is still open.",
)



def plan(n: int, seed: int, voices, eval_voices, heldout: float, dev_fraction: float, eval_fraction: float):
    """The utterances [(id, voice, speed, pitch, split, text)], deterministic in its arguments."""
    rng = random.Random(seed)
    sentences = list(SENTENCES)
    rng.shuffle(sentences)
    k = max(1, round(heldout * len(sentences)))
    unseen, seen = sentences[:k], sentences[k:]
    n_eval = max(1, round(n * eval_fraction))
    n_dev = round(n * dev_fraction)
    if n - n_eval - n_dev < 1:
        raise PrepError(f"--n {n} leaves no training utterances after {n_dev} dev and {n_eval} eval: raise --n")
    out, used = [], set()
    for split, count, vs, pool in (("train", n - n_dev - n_eval, voices, seen), ("dev", n_dev, voices, unseen),
                                   ("eval", n_eval, eval_voices, unseen)):
        order = list(vs)
        rng.shuffle(order)
        for j in range(count):
            voice = order[j % len(order)]  # round-robin: every voice gets its share
            for _ in range(100):  # a text this voice has not said yet
                text = " ".join(rng.sample(pool, 2 if len(pool) > 1 and rng.random() < 0.25 else 1))
                if (voice, text) not in used:
                    break
            used.add((voice, text))
            out.append((f"ESP-{len(out) + 1:04d}", voice, rng.randint(*SPEED), rng.randint(*PITCH), split, text))
    return out


def find_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise PrepError("espeak-ng is not installed (not found on PATH). Install it: sudo apt-get install espeak-ng "
                        "(Debian/Ubuntu; brew install espeak-ng on macOS), then re-run")
    return exe


def _listed(exe: str, which: str) -> set[str]:
    """Names `espeak-ng -v` accepts, from its voice listing: language codes (also the other languages
    in parentheses), voice names and voice files, lower-cased."""
    names = set()
    listing = subprocess.run([exe, f"--voices={which}" if which else "--voices"], capture_output=True, text=True)
    for line in listing.stdout.splitlines()[1:]:
        f = line.split()
        if len(f) >= 5:
            names |= {f[1], f[3], f[4], f[4].split("/")[-1]} | {x.strip("(") for x in f[5::2]}
    return {n.lower() for n in names}


def check_voices(exe: str, voices) -> None:
    # espeak-ng -v falls back to some voice for many unknown names, so check against its own listing
    known, variants = _listed(exe, ""), _listed(exe, "variant")
    for v in voices:
        base, _, variant = v.partition("+")
        ok = base.lower() in known
        if not ok or (variant and variant.lower() not in variants):
            what = f"variant '{variant}'" if ok else f"voice '{base}'"
            raise PrepError(f"espeak-ng has no {what} (in '{v}'): see espeak-ng --voices=en and "
                            f"espeak-ng --voices=variant, and give voices as NAME or NAME+VARIANT")


def good_wav(path: Path) -> bool:
    try:
        i = sf.info(str(path))
    except Exception:
        return False
    return i.samplerate == SAMPLE_RATE and i.channels == 1 and i.subtype == "PCM_16" and i.frames > 0


def speak(exe: str, utt, wav: Path) -> None:
    _id, voice, speed, pitch, _split, text = utt
    with atomic_path(wav) as tmp:
        r = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(tmp), text],
                           capture_output=True, text=True)
        if r.returncode != 0 or not tmp.stat().st_size:
            raise PrepError(f"espeak-ng failed on voice '{voice}' for {wav.name}: {r.stderr.strip() or r.returncode}")
        if not good_wav(tmp):  # another espeak-ng build: bring it to 22050 Hz mono 16-bit
            from multidiff.data.audio import read_audio
            x = read_audio(tmp, SAMPLE_RATE)
            sf.write(str(tmp), x[0].numpy().astype(np.float32), SAMPLE_RATE, subtype="PCM_16", format="WAV")


def _update(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    write_text(path, text)
    return True


def build(out: Path, n: int = 300, seed: int = 0, voices=TRAIN_VOICES, eval_voices=EVAL_VOICES,
          heldout: float = 0.1, dev_fraction: float = 0.1, eval_fraction: float = 0.1, workers: int = 2) -> list:
    voices, eval_voices = list(voices), list(eval_voices)
    if not voices or not eval_voices:
        raise PrepError("give at least one training voice (--voices) and one held-out voice (--eval-voices)")
    if set(voices) & set(eval_voices):
        raise PrepError(f"voices {sorted(set(voices) & set(eval_voices))} are in both --voices and --eval-voices: "
                        f"held-out voices must be unseen in training")
    if not 0 < heldout < 1:
        raise PrepError(f"--heldout-sentences must be a fraction in (0, 1), got {heldout}")
    exe = find_espeak()
    options = dict(version=VERSION, n=n, seed=seed, voices=voices, eval_voices=eval_voices, heldout=heldout,
                   dev_fraction=dev_fraction, eval_fraction=eval_fraction)
    utts = plan(n, seed, voices, eval_voices, heldout, dev_fraction, eval_fraction)
    stamp = out / "corpus.json"
    if stamp.is_file():
        old = json.loads(stamp.read_text())
        if old != options:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in options.items() if old.get(k) != v)
            raise PrepError(f"'{out}' holds a corpus built with other options ({diff}): choose another --out, "
                            f"or delete '{out}' to rebuild it")
    else:
        check_voices(exe, voices + eval_voices)
        (out / "wavs").mkdir(parents=True, exist_ok=True)
        write_text(stamp, json.dumps(options, indent=2) + "\n")

    for stale in (out / "wavs").glob(".ESP-*.tmp.wav"):  # left by a killed run
        stale.unlink()
    todo = [u for u in utts if not good_wav(out / "wavs" / f"{u[0]}.wav")]
    if not todo:
        print(f"wavs: all {len(utts)} present in {out / 'wavs'}, skipping")
    else:
        print(f"wavs: speaking {len(todo)} utterance(s) with espeak-ng ({len(utts) - len(todo)} already present)")
        from tqdm.auto import tqdm
        (out / "wavs").mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(workers) as pool:
            list(tqdm(pool.map(lambda u: speak(exe, u, out / "wavs" / f"{u[0]}.wav"), todo), total=len(todo),
                      unit="utt", disable=len(todo) < 50))

    changed = _update(out / "metadata.csv", "".join(f"{u[0]}|{u[5]}|{u[5]}\n" for u in utts))
    changed |= _update(out / "utterances.csv", "".join(f"{u[0]}|{u[1]}|{u[2]}|{u[3]}|{u[4]}\n" for u in utts))
    for split in ("train", "dev", "eval"):
        changed |= _update(out / "splits" / f"{split}.txt", "".join(f"{u[0]}\n" for u in utts if u[4] == split))
    counts = {s: sum(u[4] == s for u in utts) for s in ("train", "dev", "eval")}
    print(f"metadata.csv and splits: {'written' if changed else 'up to date, skipping'} "
          f"(train {counts['train']}, dev {counts['dev']}, eval {counts['eval']})")
    return utts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.espeak_corpus", description=__doc__.split("\n\n")[0],
                                epilog="Needs espeak-ng (apt-get install espeak-ng).")
    p.add_argument("--out", required=True, help="corpus folder to write (LJSpeech layout)")
    p.add_argument("--n", type=int, default=300, help="number of utterances (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--voices", default=",".join(TRAIN_VOICES),
                   help="comma-separated training voices, NAME or NAME+VARIANT (default %(default)s)")
    p.add_argument("--eval-voices", default=",".join(EVAL_VOICES),
                   help="comma-separated held-out voices for the eval split (default %(default)s)")
    p.add_argument("--heldout-sentences", type=float, default=0.1,
                   help="fraction of the built-in sentences never spoken in train (default 0.1)")
    p.add_argument("--dev-fraction", type=float, default=0.1, help="share of utterances in dev (default 0.1)")
    p.add_argument("--eval-fraction", type=float, default=0.1, help="share of utterances in eval (default 0.1)")
    p.add_argument("--workers", type=int, default=2, help="espeak-ng processes at once (default 2)")
    a = p.parse_args(argv)
    return run_stage(build, Path(a.out), a.n, a.seed, [v for v in a.voices.split(",") if v],
                     [v for v in a.eval_voices.split(",") if v], a.heldout_sentences, a.dev_fraction,
                     a.eval_fraction, a.workers)[1]


if __name__ == "__main__":
    sys.exit(main())
