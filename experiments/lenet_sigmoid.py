"""LeNet with sigmoid activations on Fashion-MNIST, trained by plain SGD: the vanishing gradient, layer by layer.

    python launch.py --experiment=lenet_sigmoid
    python launch.py --experiment=lenet_sigmoid --config.model.activation=relu     # the same network with ReLU

Each sigmoid passes at most a quarter of the gradient back (its derivative is at most 0.25), so the per-layer gradient
norms that every training record logs (``grad_norm/conv1`` ... ``grad_norm/logits`` in metrics.jsonl and TensorBoard,
``layer_grad_norms`` in results.json) fall from the last layer towards the input, while ReLU's stay of one order.
Plain SGD (no per-parameter scaling, which would hide the effect) then trains the sigmoid network far more slowly:
``bench/vanishing_gradients.py`` runs both and docs/recipe.md shows its figures.
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
