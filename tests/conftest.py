import os

import pytest

from bitlens import known_entropy_data

# The suite runs the fast step's eager kernels: compiling them (torch.compile) costs seconds per kernel in every
# process, including the CLI subprocesses that inherit this. tests/test_fused.py turns compiling on for its tests.
os.environ.setdefault("BITLENS_COMPILE", "0")


@pytest.fixture
def synth8():
    """4096 rows of 8-bit synthetic data in d = 16."""
    x, c = known_entropy_data(4096, 16, 8, seed=1)
    return x, c
