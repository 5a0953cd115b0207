"""cnnjax: a JAX toolkit for convolutional-network research.

Submodules are imported on demand: ``cnnjax.functional`` and ``cnnjax.reference`` need only jax / NumPy;
``cnnjax.nn`` and ``cnnjax.models`` add Flax.
"""

__version__ = "0.1.0"
