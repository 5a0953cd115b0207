"""ResNet-20 (the CIFAR family, option-A shortcuts, batch norm) on Fashion-MNIST with random crops and flips, SGD
with Nesterov momentum, weight decay and a cosine schedule with warmup.

    python launch.py --experiment=resnet
    python launch.py --experiment=resnet --config.model.depth=56            # ResNet-56 (0.85M parameters)
    python launch.py --experiment=resnet --config.data.name=cifar10         # CIFAR-10 (TFDS downloads it online)

Measured on the 2-core CPU: 583 images/s, 92 s per Fashion-MNIST epoch (one-epoch run: 80.4% test accuracy); before
oneDNN's convolutions (cnnjax.onednn) and this experiment's XLA settings for them 410, 340 before the CSE setting,
280 before batch norm was folded into one ``x * a + b``. At 340 images/s,
``--config.train.num_epochs=10 --config.data.random_flip=False`` reached 93.4% test accuracy (93.6% validation) in
27.6 minutes. Before that fold, with
``--config.train.num_epochs=9`` it reached 92.8% test accuracy (92.9% validation) in 30.4 minutes, and with 11
epochs 93.3% (46 minutes at 225 images/s, before the YNNPACK setting below). The 30-epoch default reached 94.2%
test accuracy (94.4% validation) in 89 s on an NVIDIA H100; it would take ~46 minutes on the 2-core CPU.
"""

from cnnjax.config import base_config, model_config, modern_recipe


def get_config():
    config = base_config()
    config.model = model_config("resnet", depth=20)
    modern_recipe(config, learning_rate=0.1, num_epochs=30)
    # YNNPACK for its batch norms' reductions too, and no CSE: with oneDNN's convolutions 1.06x XLA's default and
    # 1.16x the YNNPACK elementwise fusion that was best before them (bench/xla_options.py); LeNet runs faster with
    # cnnjax's default, so it is per experiment
    config.train.xla_cpu_ynn_fusion = "individual_dot,reduce"
    config.train.xla_cpu_cse = False
    config.lock()
    return config
