import pytest

from bitlens import known_entropy_data


@pytest.fixture
def synth8():
    """4096 rows of 8-bit synthetic data in d = 16."""
    x, c = known_entropy_data(4096, 16, 8, seed=1)
    return x, c
