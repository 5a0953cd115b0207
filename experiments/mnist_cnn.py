"""The Flax MNIST example's CNN on Fashion-MNIST: conv3x3x32 - avgpool2 - conv3x3x64 - avgpool2 - 256 - 10, ReLU,
SGD with momentum 0.9 at learning rate 0.1, batch 128, 10 epochs (the example's recipe).

    python launch.py --experiment=mnist_cnn
    python launch.py --experiment=mnist_cnn --config.data.name=mnist    # MNIST itself (TFDS downloads it online)

On GPUs ``train.num_devices=0`` uses all of them. On the CPU one device with oneDNN's convolutions (cnnjax.onednn)
trains it 1.42-1.61x faster than without them, and 1.1x faster than the two CPU devices (``train.cpu_devices=2``)
it used to train on (bench/vs_pytorch.py, bench/cpu_devices.py). Measured on the 2-core CPU (offline,
Fashion-MNIST): 91.9% test accuracy (91.4% validation, best epoch 8) in 149 s, training at ~4,060 images/s; on two
devices before oneDNN 91.5% in 170 s at ~3,490 images/s.
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
