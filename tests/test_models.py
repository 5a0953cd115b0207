"""The model zoo: forward shapes on 28x28x1 and 32x32x3, parameter counts (LeNet-5's 1998 table and the
literature), presets, one train step each, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import config, models, summary
from cnnjax import functional as F

KEY = jax.random.key(0)
# name -> (input shape, fields, expected trainable parameters)
CASES = {
    "lenet": ((28, 28, 1), {}, 6 * 26 + 16 * 151 + 400 * 120 + 120 + 121 * 84 + 85 * 10),
    "lenet5_classic": ((32, 32, 1), {}, 60_000),
    "cifar_cnn": ((32, 32, 3), {}, (75 * 64 + 64) + (1600 * 64 + 64) + (4096 * 256 + 256) + (256 * 10 + 10)),
}


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_shape_parameter_count_and_one_train_step(name):
    shape, fields, expected_params = CASES[name]
    model = models.get(name, **fields)
    x = jax.random.normal(KEY, (4, *shape))
    labels = jnp.array([0, 1, 2, 3])
    variables = model.init(KEY, x)
    assert _count(variables["params"]) == expected_params
    assert model.apply(variables, x).shape == (4, 10)

    def loss(params):
        scores = model.apply({**variables, "params": params}, x, train=True, rngs={"dropout": KEY})
        if name == "lenet5_classic":  # RBF penalties: smaller is better
            return jnp.mean(F.softmax_cross_entropy(-scores, labels))
        return jnp.mean(F.softmax_cross_entropy(scores, labels))

    value, grads = jax.value_and_grad(loss)(variables["params"])
    params = jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, variables["params"], grads)
    assert np.isfinite(value) and float(loss(params)) < float(value)


def test_lenet5_classic_reproduces_the_1998_table():
    rows = {row["name"]: row for row in summary.summarize(models.get("lenet5_classic"), (32, 32, 1))}
    paper = {
        "C1": (156, 122_304, (28, 28, 6)),
        "S2": (12, 5_880, (14, 14, 6)),
        "C3": (1_516, 151_600, (10, 10, 16)),
        "S4": (32, 2_000, (5, 5, 16)),
        "C5": (48_120, 48_120, (1, 1, 120)),
        "F6": (10_164, 10_164, (84,)),
    }
    for name, (params, connections, shape) in paper.items():
        assert (rows[name]["params"], rows[name]["connections"], rows[name]["output_shape"]) == (
            params,
            connections,
            shape,
        )
    assert rows["output"]["params"] == 840 and rows["output"]["trainable"] == 0
    assert sum(r["params"] for r in rows.values()) == 60_840
    assert sum(r["trainable"] for r in rows.values()) == 60_000
    assert [rows[n]["receptive_field"] for n in ("C1", "S2", "C3", "S4", "C5")] == [
        (5, 5),
        (6, 6),
        (14, 14),
        (16, 16),
        (32, 32),
    ]
    text = summary.format_summary(list(rows.values()))
    assert "122,304" in text and "60,840 parameters: 60,000 trainable, 840 fixed" in text


def test_lenet5_with_trainable_prototypes_trains_all_60840():
    variables = models.get("lenet5_classic", rbf_trainable=True).init(KEY, jnp.ones((1, 32, 32, 1)))
    assert _count(variables["params"]) == 60_840 and "constants" not in variables


def test_rbf_codes_are_distinct_plus_minus_one_bitmaps():
    from cnnjax.models.lenet import C3_TABLE, rbf_codes

    codes = rbf_codes()
    assert codes.shape == (10, 84) and set(np.unique(codes)) == {-1.0, 1.0}
    assert len({c.tobytes() for c in codes}) == 10
    assert C3_TABLE.sum() == 60 and list(C3_TABLE.sum(axis=0)) == [3] * 6 + [4] * 9 + [6]


def test_modern_lenet_is_configurable_and_summary_counts_flops():
    model = models.get(
        "lenet", filters=(8, 16, 32), kernel_size=3, padding="SAME", pool="avg", activation="tanh", hidden=(64,)
    )
    rows = summary.summarize(model, (28, 28, 1))
    assert [r["name"] for r in rows] == ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "fc1", "logits"]
    assert rows[4]["output_shape"] == (7, 7, 32) and rows[5]["output_shape"] == (3, 3, 32)
    assert rows[0]["flops"] == 28 * 28 * 8 * (2 * 9 + 1) and rows[0]["connections"] == 28 * 28 * 8 * 10
    assert rows[6]["params"] == 288 * 64 + 64


def test_impossible_hyperparameters_raise_one_clear_error_before_compiling():
    with pytest.raises(ValueError, match=r"Conv2D 'C5': a 5x5 kernel .* 4x4 feature map"):
        summary.summarize(models.get("lenet5_classic"), (28, 28, 1))
    with pytest.raises(ValueError, match=r"Conv2D 'conv2': a 11x11 kernel .* 9x9 .*Use a smaller kernel"):
        summary.summarize(models.get("lenet", kernel_size=11, padding="VALID"), (28, 28, 1))
    with pytest.raises(ValueError, match=r"MaxPool2D 'pool3': a 4x4 pooling window .* 1x1 feature map"):
        summary.summarize(models.get("lenet", filters=(4, 4, 4), pool_size=4, padding="SAME"), (28, 28, 1))
    with pytest.raises(ValueError, match=r"number of filters must be >= 1"):
        summary.summarize(models.get("lenet", filters=(0, 16)), (28, 28, 1))
    with pytest.raises(ValueError, match=r"model.kernel_size has 3 entries"):
        summary.summarize(models.get("lenet", kernel_size=(5, 5, 5)), (28, 28, 1))
    with pytest.raises(ValueError, match=r"model.pool must be one of"):
        summary.summarize(models.get("lenet", pool="median"), (28, 28, 1))


def test_registry_errors_name_the_closest_options():
    assert set(models.MODELS) >= {"lenet", "lenet5_classic", "cifar_cnn"}
    with pytest.raises(ValueError, match="unknown model 'lenet6'. Did you mean lenet"):
        models.get("lenet6")
    with pytest.raises(ValueError, match="has no field 'filter'. Did you mean filters"):
        models.get("lenet", filter=(6, 16))
    assert "hidden" in models.fields("lenet")


ZOO = ["lenet", "cifar_cnn", "alexnet", "vgg", "nin", "googlenet", "resnet", "resnet9"]


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_every_model_works_on_both_input_shapes_and_has_a_summary(name, shape):
    model = models.get(name)
    variables = models.abstract_init(model, shape)
    out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, *shape), jnp.float32))
    assert out.shape == (2, 10)
    rows = summary.summarize(model, shape)
    assert sum(r["trainable"] for r in rows) == _count(variables["params"])
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
    assert _count(models.abstract_init(models.get(name, **fields), shape)["params"]) == expected


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
    assert "batch_stats" in variables and _count(variables["batch_stats"]) > 0
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


def test_presets_are_listed_configurable_and_named_in_errors():
    names = models.list_models()
    assert names[: len(models.MODELS)] == sorted(models.MODELS) and {"resnet20", "resnet18", "vgg16_bn"} <= set(names)
    assert models.get("vgg16_bn").norm == "batch" and models.get("vgg16").norm == "none"
    assert models.get("resnet20", depth=32).depth == 32  # fields override the preset's
    section = config.model_config("resnet18", num_classes=100)
    assert (section.name, section.depth, section.stem, section.num_classes) == ("resnet18", 18, "imagenet", 100)
    with pytest.raises(ValueError, match="unknown model 'resnet19'. Did you mean resnet9, resnet18"):
        models.get("resnet19")


def test_initializers_by_name_and_their_errors():
    shape = (3, 3, 16, 64)  # fan_in 144
    draw = lambda spec: np.asarray(F.initializer(spec)(KEY, shape))  # noqa: E731
    uniform = draw("uniform:0.3")
    assert -0.3 <= uniform.min() < -0.29 and 0.29 < uniform.max() < 0.3
    assert np.all(draw("constant:0.1") == np.float32(0.1)) and not draw("zeros").any()
    truncated = draw("truncated_normal:0.02")
    assert np.abs(truncated).max() <= 0.04 and 0.015 < truncated.std() < 0.02
    assert draw("he_normal").var() == pytest.approx(2 / 144, rel=0.1)
    assert draw("glorot_uniform").var() == pytest.approx(2 / (144 + 576), rel=0.1)
    assert F.initializer("lecun_normal").spec == "lecun_normal"
    for bad in ("gaussian", "uniform", "uniform:-1", "constant:x", "he_normal:2", "truncated_normal:nan"):
        with pytest.raises(ValueError, match=f"model.bias_init='{bad}' is not an initializer: use one of lecun_normal"):
            F.initializer(bad, "model.bias_init")


@pytest.mark.parametrize(
    "name, fields, shape",
    [("lenet", {}, (28, 28, 1)), ("cifar_cnn", {}, (32, 32, 3)), ("vgg", {"depth": 11}, (32, 32, 3)),
     ("resnet", {"depth": 20}, (28, 28, 1)), ("resnet9", {"width": 8}, (28, 28, 1))],
)  # fmt: skip
def test_models_take_their_initializers_from_the_config(name, fields, shape):
    model = models.get(name, kernel_init="uniform:0.3", bias_init="constant:0.1", **fields)
    params = model.init(KEY, jnp.zeros((1, *shape)))["params"]
    leaves = jax.tree_util.tree_leaves_with_path(params)
    kernels = [np.asarray(v) for p, v in leaves if "kernel" in jax.tree_util.keystr(p)]
    biases = [np.asarray(v) for p, v in leaves if jax.tree_util.keystr(p).endswith("['bias']") and "norm" not in
              jax.tree_util.keystr(p)]  # fmt: skip
    assert kernels and all(np.abs(k).max() <= 0.3 for k in kernels) and max(np.abs(k).max() for k in kernels) > 0.29
    assert biases and all(np.all(b == np.float32(0.1)) for b in biases)
    rows = summary.summarize(model, shape)
    assert {r["init"] for r in rows if r["type"] in ("Conv2D", "Dense")} <= {
        "uniform:0.3 / constant:0.1",
        "uniform:0.3",
    }
    default = summary.summarize(models.get(name, **fields), shape)
    expected = {"lecun_normal / zeros"} if name in ("lenet", "cifar_cnn") else {"he_normal", "lecun_normal / zeros"}
    assert {r["init"] for r in default if r["type"] in ("Conv2D", "Dense")} == expected
    with pytest.raises(ValueError, match="model.kernel_init='normal' is not an initializer"):
        models.abstract_init(models.get(name, kernel_init="normal", **fields), shape)
