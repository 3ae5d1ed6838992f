"""Recipe configs: strict sections, typed overrides, resolved config round trip."""
import tomllib
from pathlib import Path

import pytest

from multidiff.kinds import schemas
from multidiff.engine.runs import load_recipe, load_run, save_resolved
from multidiff.engine.config import ConfigError, parse_override

RECIPE = """
[recipe]
kind = "image"
[data]
source = "digits"
size = 16
[model]
image_size = 16
channel_mult = [1, 2]
[train]
steps = 10
lr = 1e-3
"""


@pytest.fixture
def recipe(tmp_path):
    d = tmp_path / "my_recipe"
    d.mkdir()
    (d / "config.toml").write_text(RECIPE)
    return d


def test_sections_become_dataclasses_with_overrides(recipe):
    file, s = load_recipe(recipe, ["train.steps=25", "model.channel_mult=[1, 2, 2]", "sample.sampler=ddim",
                                   "train.lr=2"], schemas())
    assert file == recipe / "config.toml"
    assert s["train"].steps == 25 and s["train"].lr == 2.0 and isinstance(s["train"].lr, float)
    assert s["model"].channel_mult == [1, 2, 2] and s["sample"].sampler == "ddim"
    assert s["data"].size == 16 and s["diffusion"].timesteps == 1000  # defaults fill the rest


def test_resolved_config_round_trips(recipe, tmp_path):
    _, s = load_recipe(recipe, ["train.steps=7"], schemas())
    save_resolved(tmp_path / "run", s)
    again = load_run(tmp_path / "run", schemas())
    assert again == s
    assert tomllib.loads((tmp_path / "run" / "config.toml").read_text())["train"]["steps"] == 7


@pytest.mark.parametrize("override,match", [
    (["train.stpes=5"], r"unknown key\(s\) train.stpes; valid keys in \[train\]: steps, batch_size"),
    (["train.steps=five"], r"train.steps expects an integer, got 'five'"),
    (["train.steps=2.5"], "train.steps expects an integer"),
    (["model.channel_mult=[1, 'a']"], r"model.channel_mult\[1\] expects an integer"),
    (["data.random_flip=1"], "data.random_flip expects true or false"),
    (["optim.lr=1"], r"unknown section\(s\) \[optim\]; valid sections: \[recipe\], \[data\]"),
    (["recipe.kind=sound"], "recipe.kind = 'sound' is not one of"),
    (["sample.sampler=plms"], "sample.sampler = 'plms' is not one of"),
    (["train.precision=fp16"], "train.precision must be"),
    (["steps=5"], "must look like section.key=value"),
])
def test_mistakes_name_the_key_and_the_valid_choices(recipe, override, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(recipe, override, schemas())


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="no recipe config at"):
        load_recipe(tmp_path / "nope", [], schemas())
    (tmp_path / "bad.toml").write_text("[train\nsteps = 1")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_recipe(tmp_path / "bad.toml", [], schemas())
    with pytest.raises(ConfigError, match="not a multidiff run directory"):
        load_run(tmp_path, schemas())


def test_override_values_are_toml():
    assert parse_override("a.b=3") == ("a", "b", 3)
    assert parse_override("a.b=true") == ("a", "b", True)
    assert parse_override("a.b=hello") == ("a", "b", "hello")
    assert parse_override('a.b="x=y"') == ("a", "b", "x=y")


def test_stage_hash_of_one_field_ignores_the_rest_of_its_section():
    """A stage that reads one key (the mask-conditioned model reads inpaint.train_masks) must not rerun
    when another key of that section changes (adding an evaluation method)."""
    from multidiff.engine.runs import section_hash

    root = Path(__file__).parent.parent / "recipes/image_inpainting_digits"
    base = load_recipe(root, [], schemas())[1]
    methods = load_recipe(root, ['inpaint.methods=["replace"]'], schemas())[1]
    masks = load_recipe(root, ['inpaint.train_masks=["box"]'], schemas())[1]
    deps = ["data", "model", "inpaint.train_masks"]
    assert section_hash(base, deps) == section_hash(methods, deps) != section_hash(masks, deps)
    assert section_hash(base, ["inpaint"]) != section_hash(methods, ["inpaint"])
    # whole sections hash as before dotted names existed (finished stages of old runs stay finished)
    import hashlib

    from multidiff.engine.config import to_toml
    old = hashlib.sha256(to_toml({"data": base["data"], "model": base["model"]}).encode()).hexdigest()[:16]
    assert section_hash(base, ["data", "model", "missing"]) == old


def test_keys_added_later_leave_the_hashes_of_existing_runs_alone():
    """A run made before [model] noise_prior existed must still skip its finished stages and resume
    its checkpoints: an `added_key` at its default is not part of a run's identity; set, it is."""
    from dataclasses import dataclass, field

    from multidiff.modalities.audio import AUDIO
    from multidiff.engine.runs import section_hash
    from multidiff.engine.config import to_toml
    from multidiff.utils import added_key

    @dataclass
    class Before:
        width: int = 8
        names: list = field(default_factory=list)

    @dataclass
    class After(Before):
        prior: str = added_key("none")

    assert to_toml({"m": After()}, identity=True) == to_toml({"m": Before()})
    assert section_hash({"m": After()}, ["m"]) == section_hash({"m": Before()}, ["m"])
    assert section_hash({"m": After(prior="mel")}, ["m"]) != section_hash({"m": Before()}, ["m"])
    assert "prior" in to_toml({"m": After()})  # the resolved config.toml still lists every key

    # the audio keys added after the first vocoder runs (their hashes checked unchanged on those runs)
    root = Path(__file__).parent.parent / "recipes/diffwave_espeak"
    plain = load_recipe(root, ['model.noise_prior="none"', "model.prior_std_min=0.1"], schemas())[1]
    identity = to_toml({"model": plain["model"]}, identity=True)
    assert "noise_prior" not in identity and "prior_std_min" not in identity
    assert AUDIO.fingerprint(plain) == section_hash(plain, ["data", "model", "diffusion"])
