"""The model zoo: ``MODELS`` maps a family name to a Flax module class, ``PRESETS`` the variants users name
('resnet18', 'resnet56', 'vgg16_bn', ...) to a family and its fields; ``get(name, **fields)`` builds either, and
``list_models()`` lists both.

Every model is called as ``model.apply(variables, x, train=...)`` on NHWC images and returns (N, num_classes).

    >>> from cnnjax import models
    >>> models.get("resnet56").depth, models.get("resnet18").stem
    (56, 'imagenet')
    >>> models.get("vgg16_bn", width=0.5).norm
    'batch'
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


# preset -> (family, its fields): the CIFAR ResNets, the ImageNet ResNets, VGG at the paper's widths without and with
# batch norm (the family's CIFAR-style head)
PRESETS: dict[str, tuple[str, dict]] = {
    **{f"resnet{d}": ("resnet", {"depth": d, "stem": "cifar"}) for d in (20, 32, 44, 56, 110)},
    **{f"resnet{d}": ("resnet", {"depth": d, "stem": "imagenet"}) for d in (18, 34, 50, 101, 152)},
    **{f"vgg{d}": ("vgg", {"depth": d, "width": 1.0, "norm": "none"}) for d in (11, 13, 16, 19)},
    **{f"vgg{d}_bn": ("vgg", {"depth": d, "width": 1.0, "norm": "batch"}) for d in (11, 13, 16, 19)},
}


def list_models() -> list[str]:
    """Every name ``get`` accepts: the families, then the presets."""
    return sorted(MODELS) + list(PRESETS)


def resolve(name: str) -> tuple[str, dict]:
    """(family, preset fields) of a model name: a family has no preset fields."""
    return PRESETS.get(name, (name, {}))


def fields(name: str) -> list[str]:
    """The configurable fields of model ``name``."""
    return [f.name for f in dataclasses.fields(_model_class(name)) if f.init and f.name not in ("parent", "name")]


def get(name: str, **model_fields) -> nn.Module:
    """Builds model ``name`` with the given fields; unknown names or fields raise a ValueError naming the options."""
    family, preset = resolve(name)
    model_fields = {**preset, **model_fields}
    cls = _model_class(family)
    known = fields(family)
    for field in model_fields:
        if field not in known:
            raise ValueError(
                f"model {name!r} has no field {field!r}.{did_you_mean(field, known)} Its fields are: {', '.join(known)}"
            )
    return cls(**model_fields)


def _model_class(name: str) -> type[nn.Module]:
    name = resolve(name)[0]
    if name not in MODELS:
        raise ValueError(
            f"unknown model {name!r}.{did_you_mean(name, list_models())} Available models: {', '.join(list_models())}"
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
