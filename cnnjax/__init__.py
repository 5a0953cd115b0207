"""cnnjax: a JAX toolkit for convolutional-network research.

Submodules are imported on demand: ``cnnjax.functional`` and ``cnnjax.reference`` need only jax / NumPy;
``cnnjax.nn`` and ``cnnjax.models`` add Flax. Importing cnnjax sets the XLA flags of :mod:`cnnjax.backend`.
``cnnjax.load(workdir)`` gives a trained run's :class:`cnnjax.inference.Predictor`.
"""

from cnnjax.backend import apply_xla_flags

__version__ = "0.1.0"

apply_xla_flags()


def load(workdir, which: str = "best"):
    """The trained model of run directory ``workdir`` as a ``cnnjax.inference.Predictor`` (see
    :func:`cnnjax.inference.load`)."""
    from cnnjax import inference

    return inference.load(workdir, which)
