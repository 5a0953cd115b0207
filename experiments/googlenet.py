"""GoogLeNet (Inception v1 blocks with 1x1 reductions) at half width, with batch norm, on Fashion-MNIST.

    python launch.py --experiment=googlenet
    python launch.py --experiment=googlenet --config.model.width=1.0   # the paper's branch widths

SGD with Nesterov momentum, L2 5e-4, cosine schedule with warmup, random crops and flips.
Expected: 94.7% test (94.9% validation) after 30 epochs, 6.7 min on an NVIDIA H100 (jax 0.11.2).
"""

from cnnjax.config import base_config, model_config, modern_recipe


def get_config():
    config = base_config()
    config.model = model_config("googlenet", width=0.5)
    modern_recipe(config, learning_rate=0.05, num_epochs=30)
    config.lock()
    return config
