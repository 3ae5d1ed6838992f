import pytest
import torch

from multidiff.core import Schedule
from multidiff.core.oracle import GaussianOracle


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is as fast, and immune to other processes holding the second core.
    Modules of small-model tests opt in with pytestmark = pytest.mark.usefixtures("one_thread")."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def linear():
    return Schedule.linear(1000)


def oracle(sched, prediction="eps", mean=0.3, std=0.5):
    return GaussianOracle(sched, mean, std, prediction)


def noise(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
