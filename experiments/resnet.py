"""ResNet-20 (the CIFAR family, option-A shortcuts, batch norm) on Fashion-MNIST with random crops and flips, SGD
with Nesterov momentum, weight decay and a cosine schedule with warmup.

    python launch.py --experiment=resnet
    python launch.py --experiment=resnet --config.model.depth=56            # ResNet-56 (0.85M parameters)
    python launch.py --experiment=resnet --config.data.name=cifar10         # CIFAR-10 (TFDS downloads it online)

Expected: 94.2% test (94.4% validation) after 30 epochs, 89 s on an NVIDIA H100 (jax 0.11.2).
"""

from cnnjax.config import base_config, model_config, modern_recipe


def get_config():
    config = base_config()
    config.model = model_config("resnet", depth=20)
    modern_recipe(config, learning_rate=0.1, num_epochs=30)
    # YNNPACK for its batch norms' reductions too, and no CSE: faster for this model's step, slower for LeNet's, so
    # set per experiment (docs/performance.md, bench/xla_options.py)
    config.train.xla_cpu_ynn_fusion = "individual_dot,reduce"
    config.train.xla_cpu_cse = False
    config.lock()
    return config
