"""Experiments: one module per experiment, each with ``get_config()`` and a docstring giving the run command."""
