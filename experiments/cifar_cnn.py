"""The CIFAR-10 CNN of our source tutorial: conv5x5x64 - max pool 3/2 - LRN - conv5x5x64 - LRN - max pool 2/2 -
dense 256 - dense 10, trained with Adam at 1e-4, batch 64 and L2 on the weights.

    python launch.py --experiment=cifar_cnn

CIFAR-10 is downloaded by TFDS when online (or read from --config.data.data_dir holding the original tarball or
batches). Expected: the tutorial reports 69.7% test accuracy on CIFAR-10.
"""

from cnnjax.config import base_config, model_config


def get_config():
    config = base_config()
    config.data.name = "cifar10"
    config.data.batch_size = 64
    config.model = model_config("cifar_cnn")
    config.optim.name = "adam"
    config.optim.learning_rate = 1e-4
    config.optim.l2 = 4e-3
    config.train.num_epochs = 30
    # YNNPACK for the reductions too (its LRNs' and pools'): 1.10-1.16x the step's speed with cnnjax's default on the
    # two 2-core CPUs measured (bench/xla_options.py)
    config.train.xla_cpu_ynn_fusion = "individual_dot,reduce"
    config.lock()
    return config
