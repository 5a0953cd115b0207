"""The DAWNBench ResNet-9 (Page, "How to train your ResNet", 2018) at a quarter of its widths (16-32-64-128) on
Fashion-MNIST: random crops (no flips), SGD with Nesterov momentum, L2 5e-4, a cosine schedule with warmup.

    python launch.py --experiment=resnet9
    # CIFAR-10 (downloaded by TFDS) at the original widths, with the usual CIFAR crops and flips:
    python launch.py --experiment=resnet9 --config.data.name=cifar10 --config.model.width=64 \
        --config.data.random_crop_padding=4 --config.data.random_flip=True --config.data.test_time_flip=True

Pooling after the first two convs makes it about twice as fast per image as ResNet-20 (35 MFLOPs per image).
Expected: 94.6% test (94.5% validation) on a 2-core Intel Xeon (AVX-512), jax 0.10.2
(bench/results/experiment-resnet9-*.json); ``speedrun_94`` reaches 94% in 13 of its epochs.
"""

from cnnjax.config import base_config, model_config, modern_recipe


def get_config():
    config = base_config()
    config.model = model_config("resnet9", width=16)
    modern_recipe(config, learning_rate=0.1, num_epochs=20)
    config.data.random_flip = False
    config.data.test_time_shift = 1  # evaluation averages each image and its 1-pixel shifts (+0.35% test accuracy)
    # YNNPACK for its batch norms' reductions too: 1.35x the step's speed with cnnjax's default (bench/xla_options.py)
    config.train.xla_cpu_ynn_fusion = "individual_dot,reduce"
    config.lock()
    return config
