"""Modern LeNet-5 on Fashion-MNIST: conv5x5x6 (SAME) - pool2 - conv5x5x16 - pool2 - 120 - 84 - 10, ReLU, Adam.

    python launch.py --experiment=lenet

Offline the data comes from Debian's dataset-fashion-mnist package; online TFDS downloads it. Override any key, e.g.
``--config.model.filters=16,32 --config.optim.learning_rate=0.002``; ``--summary`` prints the layer table.
Measured on this 2-core CPU: see the README's results table.
"""

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
