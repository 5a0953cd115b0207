"""XLA settings that make cnnjax's layers faster, applied when cnnjax is imported, before JAX starts its backends.

XLA:CPU hands some of its operations to the YNNPACK library; by default matrix products and also reductions, which
YNNPACK runs slower than XLA's own loops here. Keeping YNNPACK for the matrix products only sped up the training steps
of bench/vs_pytorch.py on a 2-core x86 CPU by 1.08x (modern LeNet), 1.59x (Flax MNIST CNN), 1.17x (``cifar_cnn``) and
1.09x (ResNet-20), measured side by side in one process (bench/xla_options.py). The flags only concern the CPU backend;
GPU and TPU runs ignore them.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",)
OPT_OUT = "CNNJAX_XLA_FLAGS"
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


def compiler_options(ynn_fusion: str) -> dict[str, str]:
    """``jax.jit`` compiler options that give XLA:CPU the YNNPACK fusion types ``ynn_fusion`` for one program.

    ``ynn_fusion``: comma-separated :data:`YNN_FUSION_TYPES`, e.g. 'dot,eltwise,reduce' (ResNet-20's step runs 1.27x
    faster with it than with cnnjax's default, LeNet's 0.55x: bench/xla_options.py); '' keeps the process-wide setting.
    """
    if not ynn_fusion:
        return {}
    names = ynn_fusion.split(",")
    unknown = [name for name in names if name not in YNN_FUSION_TYPES]
    if unknown:
        raise ValueError(
            f"config.train.xla_cpu_ynn_fusion={ynn_fusion!r}: unknown fusion type(s) {unknown}; use a comma-separated "
            f"list of {YNN_FUSION_TYPES}, or '' for cnnjax's default"
        )
    return {"xla_cpu_experimental_ynn_fusion_type": ",".join(f"LIBRARY_FUSION_TYPE_{n.upper()}" for n in names)}
