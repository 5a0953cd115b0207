"""GoogLeNet (Inception v1 blocks with 1x1 reductions) at half width, with batch norm, on Fashion-MNIST.

    python launch.py --experiment=googlenet
    python launch.py --experiment=googlenet --config.model.width=1.0   # the paper's branch widths

SGD with Nesterov momentum, L2 5e-4, cosine schedule with warmup, random crops and flips. Measured: 94.7% test
accuracy (94.9% validation; best epoch 27 of 30), the zoo's best, in 6.7 minutes on an NVIDIA H100; on the 2-core
CPU it trains at ~42 images/s with oneDNN's convolutions (562 MFLOPs per image forward; ~27 before), so the
default would take ~11 hours there.
"""

from cnnjax.config import base_config, model_config, modern_recipe


def get_config():
    config = base_config()
    config.model = model_config("googlenet", width=0.5)
    modern_recipe(config, learning_rate=0.05, num_epochs=30)
    config.lock()
    return config
