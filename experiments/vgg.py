"""VGG-16 with batch norm at a quarter of the original widths (CIFAR-width variant) on Fashion-MNIST.

    python launch.py --experiment=vgg
    python launch.py --experiment=vgg --config.model.depth=11 --config.model.width=0.5

Random crops and flips, SGD with Nesterov momentum, L2 5e-4, cosine schedule. Accuracy and time on this machine were
not measured in the session that added it (see the README's results table).
"""

from cnnjax.config import base_config, model_config


def get_config():
    config = base_config()
    config.model = model_config("vgg", depth=16, width=0.25, norm="batch")
    config.data.random_crop_padding = 2
    config.data.random_flip = True
    config.optim.name = "nesterov"
    config.optim.learning_rate = 0.05
    config.optim.l2 = 5e-4
    config.optim.schedule = "cosine"
    config.optim.warmup_epochs = 1.0
    config.train.num_epochs = 30
    config.lock()
    return config
