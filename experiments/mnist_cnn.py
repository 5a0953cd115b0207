"""The Flax MNIST example's CNN on Fashion-MNIST: conv3x3x32 - avgpool2 - conv3x3x64 - avgpool2 - 256 - 10, ReLU,
SGD with momentum 0.9 at learning rate 0.1, batch 128, 10 epochs (the example's recipe).

    python launch.py --experiment=mnist_cnn
    python launch.py --experiment=mnist_cnn --config.data.name=mnist    # MNIST itself (TFDS downloads it online)

On GPUs ``train.num_devices=0`` uses all of them.
Expected: 91.9% test (91.4% validation), 3.9 min on a 2-core Intel Xeon (AVX-512), jax 0.10.2
(bench/results/experiment-mnist_cnn-*.json).
"""

from cnnjax.config import base_config, model_config


def get_config():
    config = base_config()
    config.model = model_config("lenet", filters=(32, 64), kernel_size=3, padding="SAME", pool="avg", hidden=(256,))
    config.optim.name = "momentum"
    config.optim.learning_rate = 0.1
    config.optim.momentum = 0.9
    config.train.num_epochs = 10
    config.train.num_devices = 0
    config.lock()
    return config
