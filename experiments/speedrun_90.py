"""Speedrun: 90% Fashion-MNIST test accuracy within 30 seconds of the command on a 2-core CPU.

    python launch.py --experiment=speedrun_90
    PYTHONPATH=. .venv/bin/python bench/speedrun.py --experiment=speedrun_90   # seeds 0, 1, 2, timed

The ``lenet`` experiment (modern LeNet-5, Adam, cosine) in 7 epochs at a higher peak rate (3e-3), the test averaged
over each image and its 1-pixel shifts, and one validation pass at the end (selecting an epoch adds nothing when the
schedule decays to zero). Chosen on validation accuracy among 7 and 8 epochs, rates 2e-3 and 3e-3, with and without
test-time shifts (mirror images as test-time views cost 5% here: Fashion-MNIST's classes are not mirror-symmetric).
"""

from experiments import lenet

TARGET_ACCURACY = 0.90
TARGET_SECONDS = 30
EPOCHS = 7


def get_config():
    config = lenet.get_config()
    with config.unlocked():
        config.optim.learning_rate = 3e-3
        config.data.test_time_shift = 1
        config.train.num_epochs = EPOCHS
        config.train.eval_every = EPOCHS
    return config
