"""Speedrun: 90% Fashion-MNIST test accuracy within 30 seconds of the command on a 2-core CPU.

    python launch.py --experiment=speedrun_90
    PYTHONPATH=. .venv/bin/python bench/speedrun.py --experiment=speedrun_90   # seeds 0, 1, 2, timed

The ``lenet`` experiment (modern LeNet-5, Adam, cosine) in 7 epochs at a higher peak rate (3e-3), the test averaged
over each image and its 1-pixel shifts, and one validation pass at the end (selecting an epoch adds nothing when the
schedule decays to zero). Chosen on validation accuracy among 7 and 8 epochs, rates 2e-3 and 3e-3, with and without
test-time shifts (mirror images as test-time views cost 5% here: Fashion-MNIST's classes are not mirror-symmetric).

Measured (bench/results/speedrun-speedrun_90-*.json): 28-29 s on a 2-core Intel Xeon (AVX-512); 27-28 s on a
2-core AMD EPYC with AVX-512 (90.29-90.49% test); 45-50 s on a 2-core AMD EPYC (AVX2), where LeNet's step runs at
10,000-12,000 images/s and 90% needs 5 epochs of it (4 epochs: 89.6% test, batch 256: 88.9-89.3%), so the goal is
not met there.
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
