"""The models the benchmarks train, as cnnjax builds them, with their jitted train step and random data.

The PyTorch twins of these models are in bench/vs_pytorch.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import models, optim, train
from cnnjax.config import base_config
from experiments import resnet, resnet9

BATCH = 128

# name -> (cnnjax model, image shape (H, W, C), config.train.xla_cpu_ynn_fusion of its experiment)
MODELS = {
    "lenet": (lambda: models.get("lenet"), (28, 28, 1), ""),
    "mnist_cnn": (
        lambda: models.get("lenet", filters=(32, 64), kernel_size=3, padding="SAME", pool="avg", hidden=(256,)),
        (28, 28, 1),
        "",
    ),
    "cifar_cnn": (lambda: models.get("cifar_cnn"), (32, 32, 3), ""),
    "resnet20": (lambda: models.get("resnet", depth=20), (32, 32, 3), resnet.get_config().train.xla_cpu_ynn_fusion),
    "resnet9": (lambda: models.get("resnet9", width=16), (28, 28, 1), resnet9.get_config().train.xla_cpu_ynn_fusion),
}


def train_workload(name: str, steps: int):
    """(model, image shape, train step, initial state, step arguments per batch) for `steps` batches of BATCH.

    The step is cnnjax's real one (Adam 1e-3, device-resident data, donated state, the experiment's XLA options); call it as
    ``step(state, *args)`` for each ``args`` in the returned list.
    """
    make_model, shape, ynn_fusion = MODELS[name]
    model = make_model()
    optimizer = optim.make_optimizer(base_config().optim, steps, 1)
    step = train.make_train_step(model, optimizer, "cross_entropy", lambda key, x: x, ynn_fusion=ynn_fusion)
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.standard_normal((steps * BATCH, *shape)).astype(np.float32))
    labels = jax.device_put(rng.integers(0, 10, steps * BATCH).astype(np.int32))
    key = jax.random.key(0)
    batches = [
        (images, labels, index, key) for index in jnp.arange(steps * BATCH, dtype=jnp.int32).reshape(steps, BATCH)
    ]
    return model, shape, step, train.init_state(model, optimizer, shape, key), batches


def run_steps(step, state, batches):
    """Runs the step over all batches and waits for the result; returns the final state."""
    for args in batches:
        state, metrics = step(state, *args)
    jax.block_until_ready(metrics)
    return state
