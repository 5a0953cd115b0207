"""The model zoo: shapes on 28x28x1 and 32x32x3, parameter counts from the literature, one train step each, clear
errors, and the visualizations of a tiny run."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from cnnjax import config, models, summary, train, visualize
from cnnjax import functional as F
from tests.fakes import small_config

KEY = jax.random.key(0)
ZOO = ["lenet", "cifar_cnn", "alexnet", "vgg", "nin", "googlenet", "resnet", "resnet9"]


def count(params) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_every_model_works_on_both_input_shapes_and_has_a_summary(name, shape):
    model = models.get(name)
    variables = models.abstract_init(model, shape)
    out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, *shape), jnp.float32))
    assert out.shape == (2, 10)
    rows = summary.summarize(model, shape)
    assert sum(r["trainable"] for r in rows) == count(variables["params"])
    assert all(r["flops"] > 0 for r in rows if r["params"])


@pytest.mark.parametrize(
    "name,fields,shape,expected",
    [
        ("resnet", dict(depth=20), (32, 32, 3), 269_722),
        ("resnet", dict(depth=56), (32, 32, 3), 853_018),
        ("resnet", dict(depth=18, stem="imagenet", num_classes=1000), (224, 224, 3), 11_689_512),
        ("resnet9", dict(), (32, 32, 3), 6_573_130),  # Page's DAWNBench ResNet-9 on CIFAR-10
        ("vgg", dict(depth=16, width=1.0, norm="none", head="imagenet", num_classes=1000), (224, 224, 3), 138_357_544),
        ("resnet56", dict(), (32, 32, 3), 853_018),  # the presets users name: the same networks
        ("resnet18", dict(num_classes=1000), (224, 224, 3), 11_689_512),
        ("vgg16", dict(head="imagenet", num_classes=1000), (224, 224, 3), 138_357_544),
    ],
)
def test_parameter_counts_match_the_literature(name, fields, shape, expected):
    assert count(models.abstract_init(models.get(name, **fields), shape)["params"]) == expected


@pytest.mark.parametrize("name", ZOO[2:])
def test_one_train_step_on_tiny_data_lowers_the_loss(name):
    model = models.get(name)
    x = jax.random.normal(KEY, (4, 28, 28, 1))
    y = jnp.array([0, 1, 2, 3])
    variables = jax.jit(model.init)(KEY, x)  # eager op-by-op init of the deeper models is slow

    def loss(params):
        logits, _ = model.apply(
            {**variables, "params": params}, x, train=True, rngs={"dropout": KEY}, mutable=["batch_stats"]
        )
        return jnp.mean(F.softmax_cross_entropy(logits, y))

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    value, grads = value_and_grad(variables["params"])
    params = jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, variables["params"], grads)
    assert np.isfinite(float(value)) and float(value_and_grad(params)[0]) < float(value)


def test_batch_norm_models_keep_running_statistics():
    variables = models.get("resnet").init(KEY, jnp.ones((2, 28, 28, 1)))
    assert "batch_stats" in variables and count(variables["batch_stats"]) > 0
    for norm in ("group", "layer", "none"):
        assert "batch_stats" not in models.get("resnet", norm=norm).init(KEY, jnp.ones((2, 28, 28, 1)))


@pytest.mark.parametrize(
    "name,fields,message",
    [
        ("resnet", dict(depth=21), r"the CIFAR ResNets have depth 6n \+ 2"),
        ("resnet", dict(depth=21, stem="imagenet"), "the ImageNet ResNets have depth"),
        ("vgg", dict(depth=12), "VGG has depth"),
        ("resnet", dict(norm="instance"), "model.norm must be one of"),
        ("vgg", dict(head="mlp"), "model.head must be 'imagenet' or 'cifar'"),
        ("alexnet", dict(filters=(64, 0, 384, 256, 256)), r"Conv2D 'conv2': the number of filters must be >= 1"),
        ("resnet9", dict(width=0), r"Conv2D 'prep': the number of filters must be >= 1"),
    ],
)
def test_impossible_hyperparameters_are_clear_errors(name, fields, message):
    with pytest.raises(ValueError, match=message):
        models.abstract_init(models.get(name, **fields), (28, 28, 1))


def test_visualizations_of_a_tiny_run(tmp_path):
    config = small_config(tmp_path, num_epochs=1)
    with jax.numpy_dtype_promotion("standard"):
        train.train_and_evaluate(config, tmp_path / "run")
        paths = visualize.visualize(config, tmp_path / "run", image_index=3)
    assert set(paths) == {"filters", "feature_maps", "confusion_matrix", "misclassified"}
    for path in paths.values():
        height, width = matplotlib.image.imread(path).shape[:2]
        assert height >= 200 and width >= 200


def test_drawing_leaves_pyplot_and_its_backend_alone(tmp_path):
    script = (
        "import sys, numpy as np\n"
        "from cnnjax import metrics, plots, train\n"
        f"plots.confusion_matrix(np.array([0, 1]), np.array([0, 0]), ['a', 'b'], {str(tmp_path / 'c.png')!r}, 't')\n"
        f"writer = metrics.MetricsWriter({str(tmp_path)!r})\n"
        "writer.figure('confusion', plots.confusion_figure(np.eye(2, dtype=int), ['a', 'b'], 't'), 1)\n"
        "writer.close()\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert matplotlib.image.imread(tmp_path / "c.png").shape[2] in (3, 4)


def test_presets_are_listed_configurable_and_named_in_errors():
    names = models.list_models()
    assert names[: len(models.MODELS)] == sorted(models.MODELS) and {"resnet20", "resnet18", "vgg16_bn"} <= set(names)
    assert models.get("vgg16_bn").norm == "batch" and models.get("vgg16").norm == "none"
    assert models.get("resnet20", depth=32).depth == 32  # fields override the preset's
    section = config.model_config("resnet18", num_classes=100)
    assert (section.name, section.depth, section.stem, section.num_classes) == ("resnet18", 18, "imagenet", 100)
    with pytest.raises(ValueError, match="unknown model 'resnet19'. Did you mean resnet9, resnet18"):
        models.get("resnet19")
