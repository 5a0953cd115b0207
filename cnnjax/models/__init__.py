"""The model zoo: ``MODELS`` maps a name to a Flax module class; ``get(name, **fields)`` builds one.

Every model is called as ``model.apply(variables, x, train=...)`` on NHWC images and returns (N, num_classes).
"""

from __future__ import annotations

import dataclasses
import difflib

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.models.cifar import CifarCNN
from cnnjax.models.classic import VGG, AlexNet, GoogLeNet, NiN
from cnnjax.models.lenet import LeNet, LeNet5Classic
from cnnjax.models.resnet import ResNet, ResNet9

MODELS: dict[str, type[nn.Module]] = {
    "lenet": LeNet,
    "lenet5_classic": LeNet5Classic,
    "cifar_cnn": CifarCNN,
    "alexnet": AlexNet,
    "vgg": VGG,
    "nin": NiN,
    "googlenet": GoogLeNet,
    "resnet": ResNet,
    "resnet9": ResNet9,
}


def fields(name: str) -> list[str]:
    """The configurable fields of model ``name``."""
    return [f.name for f in dataclasses.fields(_model_class(name)) if f.init and f.name not in ("parent", "name")]


def get(name: str, **model_fields) -> nn.Module:
    """Builds model ``name`` with the given fields; unknown names or fields raise a ValueError naming the options."""
    cls = _model_class(name)
    known = fields(name)
    for field in model_fields:
        if field not in known:
            raise ValueError(
                f"model {name!r} has no field {field!r}.{did_you_mean(field, known)} Its fields are: {', '.join(known)}"
            )
    return cls(**model_fields)


def _model_class(name: str) -> type[nn.Module]:
    if name not in MODELS:
        raise ValueError(
            f"unknown model {name!r}.{did_you_mean(name, MODELS)} Available models: {', '.join(sorted(MODELS))}"
        )
    return MODELS[name]


def abstract_init(model: nn.Module, image_shape, **call_kwargs):
    """Traces ``model.init`` on one (1, H, W, C) input without computing or compiling; returns the variables as
    ShapeDtypeStructs. A model whose hyperparameters cannot work raises its ValueError here, without JAX's note."""
    image = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    try:
        return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **call_kwargs), image)
    except ValueError as error:
        raise ValueError(str(error).split("\n--------------------\n")[0]) from None


def did_you_mean(value: str, options) -> str:
    """' Did you mean a, b?' listing the options closest to ``value``, or '' when none is close."""
    close = difflib.get_close_matches(value, list(options), n=3)
    return f" Did you mean {', '.join(close)}?" if close else ""
