import pytest
import torch

from multidiff.core import Schedule
from multidiff.models.gaussian_oracle import GaussianOracle


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def linear():
    return Schedule.linear(1000)


def oracle(sched, prediction="eps", mean=0.3, std=0.5):
    return GaussianOracle(sched, mean, std, prediction)


def noise(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
