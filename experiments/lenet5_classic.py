"""The 1998 LeNet-5 (LeCun et al.) on Fashion-MNIST padded to 32x32: trainable subsampling, C3's connection table,
scaled tanh, and fixed RBF output codes trained with the paper's criterion (the squared distance of F6's state to
the code of the correct class, eq. 8), by plain SGD.

    python launch.py --experiment=lenet5_classic

Use ``--config.data.name=mnist`` for the digits it was designed for (TFDS downloads MNIST when online).
Expected: 88.8% test (88.7% validation), 116 s on a 2-core Intel Xeon (AVX-512), jax 0.10.2
(bench/results/experiment-lenet5_classic-*.json).
"""

from cnnjax.config import base_config, model_config


def get_config():
    config = base_config()
    config.model = model_config("lenet5_classic")
    config.data.pad_to = 32
    config.train.loss = "rbf"
    config.optim.name = "sgd"
    config.optim.learning_rate = 0.01
    config.optim.schedule = "step"
    config.optim.decay_epochs = 4.0
    config.optim.decay_rate = 0.5
    config.data.batch_size = 32
    config.train.num_epochs = 10
    config.lock()
    return config
