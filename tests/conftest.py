import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (full-size variants, sweeps)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("EDGEVIT_RUNSLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_torch_thread():
    """Training-heavy tests on two shared cores: a second OpenMP thread waiting on a busy core makes every op crawl."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seeded_torch():
    """Every test starts from the same torch RNG state: the small random-init models of `helpers.TINY` (and any
    random input) are the same whatever ran before, so a failure reproduces when the test is run alone."""
    import torch

    torch.manual_seed(0)
