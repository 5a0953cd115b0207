"""Test configuration: the CPU platform unless ``JAX_PLATFORMS`` names another, and strict dtype promotion and rank
promotion that raises, which catch silent broadcasting bugs."""

import os
import tempfile

# The suite checks what cnnjax promises on the CPU (bitwise-identical resumes, oneDNN's convolutions, XLA:CPU's
# options, forced host devices, the oracle at float32 tolerances): on a machine with a GPU it still runs there, and
# its subprocesses with it. `JAX_PLATFORMS=cuda python -m pytest tests/test_functional.py ...` runs tests on a GPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# launch.py's persistent compilation cache: one per test session (its subprocesses share it), not the user's.
os.environ.setdefault("CNNJAX_COMPILATION_CACHE", tempfile.mkdtemp(prefix="cnnjax-xla-cache-"))

import jax  # noqa: E402
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


@pytest.fixture
def standard_dtype_promotion():
    """Optax's internals mix Python floats with int32 step counts, which strict promotion rejects: modules that train
    use this (``pytestmark``); cnnjax's own ops are checked under strict promotion in the others."""
    with jax.numpy_dtype_promotion("standard"):
        yield
