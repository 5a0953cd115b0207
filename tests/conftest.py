"""Test configuration: strict dtype promotion and rank promotion that raises catch silent broadcasting bugs."""

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Runs a test in float64 (``jax_enable_x64``) so comparisons with the NumPy oracle can be tight."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
