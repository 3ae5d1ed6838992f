"""Each sampler's spec (core/samplers.py) states what its code does: checked by running it."""
import inspect

import pytest
import torch

from multidiff.core import SAMPLER_SPECS, SAMPLERS, SPACINGS, Denoiser, default_spacing, nfe, sample
from multidiff.core.assemble import ETA_SAMPLERS
from multidiff.core.samplers import SAMPLER_FNS, VE_SAMPLERS, VP_SAMPLERS

from conftest import noise, oracle

pytestmark = pytest.mark.usefixtures("one_thread")


class Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x, t, **cond):
        self.calls += 1
        return self.model(x, t)


class FamilyRecording(Denoiser):
    """Records which view of the model a sampler asks for: VP (den.vp) or VE (den(x, sigma))."""

    def __init__(self, *args):
        super().__init__(*args)
        self.views = set()

    def vp(self, *args, **kw):
        self.views.add("vp")
        return super().vp(*args, **kw)

    def __call__(self, *args, **kw):
        self.views.add("ve")
        return super().__call__(*args, **kw)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_nfe_is_the_number_of_model_calls(linear, sampler, steps):
    net = Counting(oracle(linear))
    sample(Denoiser(net, linear), noise(2, 1, 3), sampler, steps, default_spacing(sampler),
           generator=torch.Generator().manual_seed(0))
    assert net.calls == nfe(sampler, steps)
    # classifier-free guidance batches both halves into the same call: the count is unchanged
    guided = Counting(oracle(linear))
    sample(Denoiser(guided, linear), noise(2, 1, 3), sampler, steps, default_spacing(sampler),
           cond={"label": torch.zeros(2)}, uncond={"label": torch.ones(2)}, guidance_scale=2.0,
           generator=torch.Generator().manual_seed(0))
    assert guided.calls == nfe(sampler, steps)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_family_is_the_view_the_sampler_uses(linear, sampler):
    den = FamilyRecording(oracle(linear), linear, "eps")
    sample(den, noise(2, 1, 3), sampler, 4, default_spacing(sampler), generator=torch.Generator().manual_seed(0))
    assert den.views == {SAMPLER_SPECS[sampler].family}
    assert (sampler in VP_SAMPLERS) == (SAMPLER_SPECS[sampler].family == "vp") == (sampler not in VE_SAMPLERS)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_eta_applies_where_the_spec_says_with_its_default(linear, sampler):
    spec = SAMPLER_SPECS[sampler]
    den, z = Denoiser(oracle(linear), linear), noise(2, 1, 3)
    run = lambda **kw: sample(den, z, sampler, 4, default_spacing(sampler),  # noqa: E731
                              generator=torch.Generator().manual_seed(1), **kw)
    assert (sampler in ETA_SAMPLERS) == (spec.eta is not None)
    if spec.eta is None:
        assert "eta" not in inspect.signature(spec.fn).parameters
        with pytest.raises(ValueError, match="eta applies to"):
            run(eta=0.5)
    else:
        assert inspect.signature(spec.fn).parameters["eta"].default == spec.eta
        assert torch.equal(run(eta=spec.eta), run())  # the spec's default is what an omitted eta gives
        assert not torch.equal(run(eta=spec.eta + 0.5), run())  # and eta reaches the sampler


def test_default_spacings_and_the_table(linear):
    assert SAMPLERS == ("ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m")
    assert {s: default_spacing(s) for s in SAMPLERS} == {
        "ddpm": "leading", "ddim": "leading", "euler": "karras", "euler_ancestral": "karras", "heun": "karras",
        "dpmpp_2m": "karras"}
    assert all(default_spacing(s) in SPACINGS for s in SAMPLERS)
    assert SAMPLER_FNS == {s: spec.fn for s, spec in SAMPLER_SPECS.items()}
    assert [nfe("heun", n) for n in (1, 10)] == [1, 19] and nfe("dpmpp_2m", 10) == 10
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        nfe("plms", 10)
