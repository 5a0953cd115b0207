"""XLA settings: flags that make cnnjax's layers faster, applied when cnnjax is imported, before JAX starts its
backends, and per-program options set by the config (:class:`XlaOptions`).

XLA:CPU hands some of its operations to the YNNPACK library; by default matrix products and also reductions, which
YNNPACK runs slower than XLA's own loops for the small models. Keeping YNNPACK for the matrix products only makes the
LeNet's and the MNIST CNN's training steps faster; experiments whose models prefer another setting set it per program
(``train.xla_cpu_ynn_fusion``; docs/performance.md, bench/xla_options.py). The flags only concern the CPU backend;
GPU and TPU runs ignore them. ``CNNJAX_XLA_FLAGS=0`` turns them off.

:func:`enable_compilation_cache` keeps compiled programs on disk between processes (JAX's persistent compilation
cache), so a second run of an experiment starts training without compiling its steps again; ``launch.py`` turns it on.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import NamedTuple

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",)
OPT_OUT = "CNNJAX_XLA_FLAGS"
CACHE_DIR = "CNNJAX_COMPILATION_CACHE"  # the cache's directory, or 0 for none
CACHE_MIN_COMPILE_S = 0.2  # programs that compile faster are not worth a file (the evaluation's small helpers)
YNN_FUSION_TYPES = ("dot", "eltwise", "reduce", "individual_dot", "individual_convolution")


def apply_xla_flags(environ: MutableMapping[str, str] = os.environ) -> tuple[str, ...]:
    """Appends each of :data:`CPU_FLAGS` to ``XLA_FLAGS`` unless that flag is set there already, or ``CNNJAX_XLA_FLAGS=0``.

    They take effect if JAX has not started its backends yet (no array was created before ``import cnnjax``).
    Returns the flags added.
    """
    if environ.get(OPT_OUT, "1") == "0":
        return ()
    current = environ.get("XLA_FLAGS", "")
    added = tuple(flag for flag in CPU_FLAGS if flag.split("=")[0] not in current)
    if added:
        environ["XLA_FLAGS"] = " ".join((current, *added)).strip()
    return added


def compilation_cache_dir(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Where compiled programs persist: ``$CNNJAX_COMPILATION_CACHE``, else ``$XDG_CACHE_HOME/cnnjax/xla`` (by default
    ``~/.cache/cnnjax/xla``); None when ``CNNJAX_COMPILATION_CACHE=0``."""
    chosen = environ.get(CACHE_DIR, "")
    if chosen == "0":
        return None
    if chosen:
        return Path(chosen).expanduser()
    return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnjax" / "xla"


def enable_compilation_cache(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Turns on JAX's persistent compilation cache in :func:`compilation_cache_dir` unless a cache directory is set
    already (``jax_compilation_cache_dir``, which wins). Cached programs are the compiler's own output, so runs stay
    bitwise identical; the key covers the program, the XLA flags and options, and the jax and device versions.

    Returns:
      The cache directory in use, or None (turned off, or the directory cannot be created: then runs compile).
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    directory = compilation_cache_dir(environ)
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_S)
    return directory


class XlaOptions(NamedTuple):
    """A config's per-program XLA settings (``config.train.xla_*``); hashable, so compiled steps can be cached by them.
    Each backend's compilations use its own and ignore the others'.

    ``ynn_fusion``: comma-separated :data:`YNN_FUSION_TYPES` that YNNPACK runs, e.g. 'dot,eltwise,reduce' (faster for
    some models, slower for others: docs/performance.md, bench/xla_options.py); '' keeps the process-wide setting
    (:data:`CPU_FLAGS`).
    ``cse``: False turns off XLA's common-subexpression elimination. It merges the batch-norm scale's broadcast in the
    forward pass with the same broadcast in the backward pass; shared, the broadcast stays out of YNNPACK's fusions
    and is written out at the activations' full size, 19 times per ResNet-20 step, which is why
    ``experiments/resnet.py`` turns it off (docs/performance.md). CPU compilations only.
    ``gpu_deterministic``: XLA:GPU's deterministic operations (``xla_gpu_deterministic_ops``: no atomics in
    reductions and scatters, deterministic convolution algorithms), so that a run and its resume from a checkpoint
    are bitwise identical on a GPU as on the CPU; without it an H100 resumed to within 1 ulp only.
    """

    ynn_fusion: str = ""
    cse: bool = True
    gpu_deterministic: bool = True

    @classmethod
    def of(cls, train_config) -> XlaOptions:
        """The options of a ``config.train`` section."""
        return cls(train_config.xla_cpu_ynn_fusion, train_config.xla_cpu_cse, train_config.xla_gpu_deterministic)

    def compiler_options(self) -> dict[str, str]:
        """``jax.jit`` compiler options that apply these settings to one program; raises a ValueError naming the config
        key for an unknown YNNPACK fusion type."""
        import jax  # here, so that ``import cnnjax`` stays light

        platform = jax.default_backend()
        options = {} if self.cse or platform != "cpu" else {"xla_disable_hlo_passes": "cse"}
        if platform == "gpu" and self.gpu_deterministic:
            options["xla_gpu_deterministic_ops"] = True
        if not self.ynn_fusion:
            return options
        names = self.ynn_fusion.split(",")
        unknown = [name for name in names if name not in YNN_FUSION_TYPES]
        if unknown:
            raise ValueError(
                f"config.train.xla_cpu_ynn_fusion={self.ynn_fusion!r}: unknown fusion type(s) {unknown}; use a "
                f"comma-separated list of {YNN_FUSION_TYPES}, or '' for cnnjax's default"
            )
        fusion_types = ",".join(f"LIBRARY_FUSION_TYPE_{n.upper()}" for n in names)
        return {**options, "xla_cpu_experimental_ynn_fusion_type": fusion_types}
