"""LeNet with sigmoid activations on Fashion-MNIST, trained by plain SGD: the vanishing gradient, layer by layer.

    python launch.py --experiment=lenet_sigmoid
    python launch.py --experiment=lenet_sigmoid --config.model.activation=relu     # the same network with ReLU

Each sigmoid passes at most a quarter of the gradient back (its derivative is at most 0.25), so the per-layer gradient
norms that every training record logs (``grad_norm/conv1`` ... ``grad_norm/logits`` in metrics.jsonl and TensorBoard,
``layer_grad_norms`` in results.json) fall from the last layer towards the input, while ReLU's stay of one order.
Plain SGD (no per-parameter scaling, which would hide the effect) then trains the sigmoid network far more slowly:
after 2 epochs 41.3% test (its first epoch stays at chance level, and the run says so) against ReLU's 86.0%, with
the first step's conv1 / logits gradient-norm ratio 0.0047 against 0.195 (2-core Intel Xeon, AVX-512;
``bench/vanishing_gradients.py``, rendered in docs/recipe.md).
"""

from cnnjax.config import base_config, model_config


def get_config():
    config = base_config()
    config.model = model_config("lenet")
    config.model.activation = "sigmoid"
    config.optim.name = "sgd"
    config.optim.learning_rate = 0.1
    config.train.num_epochs = 5
    config.lock()
    return config
