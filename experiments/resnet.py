"""ResNet-20 (the CIFAR family, option-A shortcuts, batch norm) on Fashion-MNIST with random crops and flips, SGD
with Nesterov momentum, weight decay and a cosine schedule with warmup.

    python launch.py --experiment=resnet
    python launch.py --experiment=resnet --config.model.depth=56            # ResNet-56 (0.85M parameters)
    python launch.py --experiment=resnet --config.data.name=cifar10         # CIFAR-10 (TFDS downloads it online)

Throughput here: about 180-250 images/s on the 2-core CPU, so an epoch of Fashion-MNIST takes 4-5 minutes; the
accuracy of a full run was not measured in the session that added it (see the README's results table).
"""

from cnnjax.config import base_config, model_config, modern_recipe


def get_config():
    config = base_config()
    config.model = model_config("resnet", depth=20)
    modern_recipe(config, learning_rate=0.1, num_epochs=30)
    config.lock()
    return config
