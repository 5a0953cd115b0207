"""Modern LeNet-5 on Fashion-MNIST: conv5x5x6 (SAME) - pool2 - conv5x5x16 - pool2 - 120 - 84 - 10, ReLU, Adam.

    python launch.py --experiment=lenet

Offline the data comes from Debian's dataset-fashion-mnist package; online TFDS downloads it. Override any key, e.g.
``--config.model.filters=16,32 --config.optim.learning_rate=0.002``; ``--summary`` prints the layer table.
Expected: 90.4% test (90.8% validation), 38 s on a 2-core Intel Xeon (AVX-512), jax 0.10.2
(bench/results/experiment-lenet-*.json).
"""

from cnnjax import sweep
from cnnjax.config import base_config, model_config


def get_config():
    config = base_config()
    config.model = model_config("lenet")
    config.optim.name = "adam"
    config.optim.learning_rate = 2e-3
    config.optim.schedule = "cosine"
    config.train.num_epochs = 10
    config.lock()
    return config


def sweeps():
    """Named sweeps: ``python launch.py --experiment=lenet --sweep`` runs 'architecture', ``--sweep=NAME`` another.

    architecture: filter counts x kernel sizes x pool sizes (8 trials of 3 epochs).
    optimization: learning rate x weight decay x seed (12 trials; --sweep_executor=vectorized trains
    the 6 of each seed as one group).
    """
    return {
        "architecture": sweep.product(
            sweep.grid(
                **{"model.filters": [(6, 16), (16, 32)], "model.kernel_size": [3, 5], "model.pool_size": [2, 3]}
            ),
            [{"train.num_epochs": 3}],
        ),
        "optimization": sweep.grid(
            **{"optim.learning_rate": [1e-3, 2e-3, 4e-3], "optim.weight_decay": [0.0, 1e-4], "train.seed": [0, 1]}
        ),
    }
