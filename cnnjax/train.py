"""Training and evaluation: ``train_and_evaluate(config, workdir) -> results``.

One run: check the config (before anything slow), load the data onto the device, build the model and optimizer,
resume from the latest checkpoint in ``workdir`` if there is one, train with a jitted step over plain-pytree state,
evaluate on the validation split, keep the best checkpoint (early stopping on validation accuracy), test the best
parameters, and write ``results.json``, ``metrics.jsonl``, TensorBoard events and a learning-curve PNG.

Determinism: parameters come from ``seed``, the batch order of each epoch from (seed, epoch), and the randomness of
step s (augmentation, dropout) from ``fold_in(key, s)``, so a resumed run is bitwise identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from cnnjax import backend, checkpoint, data, metrics, models, optim, parallel, plots, preemption, run_card, rundir
from cnnjax import config as config_lib
from cnnjax import functional as F
from cnnjax import nn as cnn
from cnnjax.checkpoint import Checkpoints
from cnnjax.data.image_folder import NAME as IMAGE_FOLDER
from cnnjax.data.pipeline import BALANCE_MODES

# loss name -> (per-example loss of (outputs, labels), class scores from outputs: the argmax is the prediction)
LOSSES = {
    "cross_entropy": (F.softmax_cross_entropy, lambda outputs: outputs),
    "mse": (F.mean_squared_error, lambda outputs: outputs),
    "rbf": (F.rbf_loss, lambda penalties: -penalties),  # LeNet-5: the smallest penalty wins
}


COMPUTE_DTYPES = ("float32", "bfloat16")
MATMUL_PRECISIONS = ("default", "bfloat16", "tensorfloat32", "float32")  # jax.default_matmul_precision's names


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def expected_image_shape(data_config) -> tuple[int, int, int] | None:
    """The (H, W, C) the model will see, known without loading the data for cnnjax's datasets (and for an image
    folder with ``data.image_size`` and ``data.channels`` set)."""
    spec = data.DATASETS.get(data_config.name)
    if spec is not None:
        h, w, c = spec.image_shape
    elif data_config.name == IMAGE_FOLDER and data_config.image_size and data_config.channels:
        h = w = data_config.image_size
        c = data_config.channels
    else:
        return None
    return (data_config.pad_to, data_config.pad_to, c) if data_config.pad_to else (h, w, c)


def check_model(model, image_shape, num_classes: int | None) -> None:
    """Traces the model on ``image_shape`` without compiling, so impossible shapes fail before anything long starts.

    Args:
      model: a Flax module of the zoo.
      image_shape: one example's (H, W, C).
      num_classes: the classes the data has, checked against the model's outputs; None skips that check.

    Raises:
      ValueError: naming the layer whose shapes cannot work, or the output count and ``model.num_classes``.
    """
    variables = models.abstract_init(model, image_shape)
    outputs = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
    if num_classes is not None and outputs.shape[-1] != num_classes:
        raise ValueError(
            f"the model outputs {outputs.shape[-1]} classes but the dataset has {num_classes}; set "
            f"--config.model.num_classes={num_classes}"
        )


def check_against_data(model, data_config, splits) -> None:
    """:func:`check_model` against loaded data, for data whose shape and classes are known only once loaded.

    Args:
      model: a Flax module of the zoo.
      data_config: the ``data`` config; only an image folder is checked here (built-in datasets are checked from
        their known shapes before loading).
      splits: the loaded splits (``data.Splits``).
    """
    if expected_image_shape(data_config) is None or data_config.name not in data.DATASETS:
        check_model(model, splits.image_shape, splits.num_classes)


def check_config(config):
    """Rejects every bad value with one clear line before data loading or compilation; returns the model."""
    config_lib.validate(config)
    optim.validate(config.optim)
    if config.train.loss not in LOSSES:
        raise ValueError(f"config.train.loss={config.train.loss!r} is invalid: choose one of {', '.join(LOSSES)}")
    if config.data.balance not in BALANCE_MODES:
        raise ValueError(f"config.data.balance={config.data.balance!r} is invalid: choose one of {BALANCE_MODES}")
    if config.train.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"config.train.compute_dtype={config.train.compute_dtype!r} is invalid: choose one of {COMPUTE_DTYPES}"
        )
    if config.train.matmul_precision not in MATMUL_PRECISIONS:
        raise ValueError(f"config.train.matmul_precision={config.train.matmul_precision!r} is invalid: choose one of "
                         f"{MATMUL_PRECISIONS}")  # fmt: skip
    parallel.split_cpu(config.train.cpu_devices)  # before the options below start JAX
    backend.XlaOptions.of(config.train).compiler_options()
    devices = parallel.num_devices(config.train.num_devices)
    for key in ("batch_size", "eval_batch_size"):
        if config.data[key] % devices:
            raise ValueError(
                f"config.data.{key}={config.data[key]} is invalid: it must be a multiple of the {devices} devices "
                "the batch is split over (config.train.num_devices)"
            )
    model = models.get(config.model.name, **{k: v for k, v in config.model.items() if k != "name"})
    image_shape = expected_image_shape(config.data)
    if image_shape is not None:
        spec = data.DATASETS.get(config.data.name)
        check_model(model, image_shape, spec.num_classes if spec else None)
    return model


# ----------------------------------------------------------------------------------------------------------------------
# State and steps
# ----------------------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 1, 2), compiler_options={"xla_backend_optimization_level": 0})
def init_state(model, optimizer, image_shape: tuple[int, ...], key) -> dict:
    """A fresh training state as a plain pytree.

    Compiled once per (model, optimizer, image_shape) without LLVM optimizations, since it runs once: op-by-op
    initialization would compile every operation separately, and an optimized compile takes several times longer.

    Args:
      model: a Flax module.
      optimizer: an ``optax.GradientTransformation``.
      image_shape: one example's (H, W, C).
      key: the PRNG key of the parameters.

    Returns:
      ``{step, params, model_state, opt_state, epoch_sums}``: model_state holds batch statistics and constants,
      epoch_sums the running (loss, accuracy, steps) of the current epoch.
    """
    variables = dict(model.init(key, jnp.zeros((1, *image_shape), jnp.float32)))
    params = variables.pop("params")
    return {
        "step": jnp.array(0, jnp.int32),
        "params": params,
        "model_state": variables,
        "opt_state": optimizer.init(params),
        "epoch_sums": jnp.zeros(3, jnp.float32),
    }


def cast_floats(tree, dtype):
    """The floating-point leaves of ``tree`` cast to ``dtype`` (mixed precision: float32 master copies stay)."""
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def run_state(config, model, optimizer, image_shape) -> tuple[dict, jax.Array]:
    """A run's initial state and the key its steps fold in.

    Args:
      config: the run's config.
      model: a Flax module.
      optimizer: the (possibly shared) optimizer.
      image_shape: one example's (H, W, C).

    Returns:
      (state, key): parameters drawn from ``train.seed``, this run's ``optim.INJECTED`` values in the optimizer's
      state, and the key that each step folds its number into.
    """
    init_key, train_key = jax.random.split(jax.random.key(config.train.seed))
    state = init_state(model, optimizer, image_shape, init_key)
    state["opt_state"] = optim.with_hyperparams(state["opt_state"], **{k: config.optim[k] for k in optim.INJECTED})
    if config.optim.schedule == "plateau":
        state["plateau"] = optim.plateau(config.optim).init(state["params"])
    if config.optim.lookahead:
        state["slow"] = jax.tree_util.tree_map(jnp.copy, state["params"])
    if config.train.ema_decay:
        state["ema"] = jax.tree_util.tree_map(
            jnp.copy, {"params": state["params"], "model_state": state["model_state"]}
        )
    return state, train_key


def make_train_step(
    model, optimizer, loss_name: str, augment, compute_dtype: str = "float32", xla: backend.XlaOptions | None = None
):
    """The jitted :func:`train_step_fn`; the state is donated.

    Args:
      model, optimizer, loss_name, augment, compute_dtype: as for :func:`train_step_fn`.
      xla: the config's ``backend.XlaOptions`` (None: the defaults).

    Returns:
      (state, images, labels, batch_index, key) -> (state, metrics).
    """
    step_fn = train_step_fn(model, optimizer, loss_name, augment, compute_dtype)
    return jax.jit(step_fn, donate_argnums=0, compiler_options=(xla or backend.XlaOptions()).compiler_options())


def train_step_fn(
    model, optimizer, loss_name: str, augment, compute_dtype: str = "float32", label_smoothing: float = 0.0, *,
    ema_decay: float = 0.0, grad_accum_steps: int = 1, mixing: data.Mixing | None = None,
):  # fmt: skip
    """The pure training step (state, images, labels, batch_index, key) -> (state, metrics), to jit or vmap.

    With ``compute_dtype='bfloat16'`` the forward and backward passes run in bfloat16 on bfloat16 copies of the
    float32 parameters; the loss, gradients, optimizer and parameters stay float32. With ``grad_accum_steps`` = k the
    batch is split into k micro-batches whose gradients are averaged (one ``lax.scan``, one optimizer update); batch
    norm sees each micro-batch (its statistics move k times per step). Mixup/CutMix train on soft targets with
    ``optax.softmax_cross_entropy``; the logged training accuracy is against the unmixed labels.

    Args:
      model: a Flax module.
      optimizer: an ``optax.GradientTransformation``.
      loss_name: 'cross_entropy' or 'mse'.
      augment: (key, images) -> images, applied on the device, or None.
      compute_dtype: 'float32' or 'bfloat16'.
      label_smoothing: as ``config.train.label_smoothing`` (cross_entropy only).
      ema_decay: > 0 keeps ``state['ema']`` (params and model state) as an exponential moving average with decay
        ``min(ema_decay, (1 + step) / (10 + step))`` (TensorFlow's warmup of the decay).
      grad_accum_steps: micro-batches per optimizer step (``train.grad_accum_steps``).
      mixing: Mixup / CutMix settings (cross_entropy only); None: off.

    Returns:
      (state, images (B, H, W, C), labels (B,), batch_index (B,), key) -> (state, metrics).
    """
    loss_fn, scores_fn = LOSSES[loss_name]
    if label_smoothing:
        loss_fn = functools.partial(loss_fn, label_smoothing=label_smoothing)
    dtype = jnp.dtype(compute_dtype)
    mixing = mixing or data.Mixing()

    def soft_loss(outputs, y, lam):
        """Cross-entropy against ``lam * target(y) + (1 - lam) * target(y[::-1])``, smoothed targets."""
        k = outputs.shape[-1]
        target = optax.smooth_labels(jax.nn.one_hot(y, k), label_smoothing) if label_smoothing else jax.nn.one_hot(y, k)
        return optax.softmax_cross_entropy(outputs, lam * target + (1 - lam) * target[::-1])

    def gradients(params, model_state, x, y, lam, dropout_key):
        """(loss, accuracy, grads, batch-statistics updates) of one (micro-)batch."""

        def loss_of(params):
            outputs, updates = model.apply(
                cast_floats({"params": params, **model_state}, dtype),
                cast_floats(x, dtype),
                train=True,
                rngs={"dropout": dropout_key},
                mutable=["batch_stats"],
            )
            outputs = outputs.astype(jnp.float32)
            losses = soft_loss(outputs, y, lam) if mixing.enabled else loss_fn(outputs, y)
            return jnp.mean(losses), (outputs, cast_floats(updates, jnp.float32))

        (loss, (outputs, updates)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        accuracy = jnp.mean((jnp.argmax(scores_fn(outputs), axis=-1) == y).astype(jnp.float32))
        return loss, accuracy, grads, updates

    def accumulated(params, model_state, x, y, lam, dropout_key):
        """:func:`gradients` averaged over ``grad_accum_steps`` micro-batches, batch statistics carried along."""
        if grad_accum_steps == 1:
            loss, accuracy, grads, updates = gradients(params, model_state, x, y, lam, dropout_key)
            return loss, accuracy, grads, {**model_state, **updates}
        micro = lambda a: a.reshape(grad_accum_steps, a.shape[0] // grad_accum_steps, *a.shape[1:])  # noqa: E731

        def body(carry, batch):
            model_state, sums = carry
            x_i, y_i, i = batch
            loss, accuracy, grads, updates = gradients(params, model_state, x_i, y_i, lam,
                                                       jax.random.fold_in(dropout_key, i))  # fmt: skip
            sums = jax.tree_util.tree_map(jnp.add, sums, (loss, accuracy, grads))
            return ({**model_state, **updates}, sums), None

        zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree_util.tree_map(jnp.zeros_like, params))
        (model_state, sums), _ = lax.scan(
            body, (model_state, zeros), (micro(x), micro(y), jnp.arange(grad_accum_steps))
        )
        loss, accuracy, grads = jax.tree_util.tree_map(lambda a: a / grad_accum_steps, sums)
        return loss, accuracy, grads, model_state

    def train_step(state, images, labels, batch_index, key):
        step_key = jax.random.fold_in(key, state["step"])
        augment_key, dropout_key = jax.random.split(step_key)
        x, y = augment(augment_key, images[batch_index]), labels[batch_index]
        lam = jnp.ones((), jnp.float32)
        if mixing.enabled:
            x, lam = data.mix(jax.random.fold_in(step_key, 2), x, mixing)
        loss, accuracy, grads, model_state = accumulated(state["params"], state["model_state"], x, y, lam,
                                                         dropout_key)  # fmt: skip
        lookahead = "slow" in state
        current = optax.LookaheadParams(state["params"], state["slow"]) if lookahead else state["params"]
        param_updates, opt_state = optimizer.update(grads, state["opt_state"], current)
        rate_scale = state["plateau"].scale if "plateau" in state else jnp.ones((), jnp.float32)
        param_updates = jax.tree_util.tree_map(lambda u: (rate_scale * u).astype(u.dtype), param_updates)
        updated = optax.apply_updates(current, param_updates)
        params = updated.fast if lookahead else updated
        new_state = {
            **state,
            "step": state["step"] + 1,
            "params": params,
            "model_state": model_state,
            "opt_state": opt_state,
            "epoch_sums": state["epoch_sums"] + jnp.stack([loss, accuracy, jnp.ones((), jnp.float32)]),
        }
        if lookahead:
            new_state["slow"] = updated.slow
        if ema_decay:
            t = state["step"].astype(jnp.float32)
            decay = jnp.minimum(ema_decay, (1.0 + t) / (10.0 + t))
            new_state["ema"] = jax.tree_util.tree_map(
                lambda average, value: decay * average + (1.0 - decay) * value
                if jnp.issubdtype(value.dtype, jnp.floating) else value,
                state["ema"], {"params": params, "model_state": model_state},
            )  # fmt: skip
        # per top-level layer: vanishing gradients show as norms falling layer by layer towards the input; the
        # global norm is theirs combined (each gradient reduced once: faster than one norm over the whole tree)
        layer_grad_norms = {name: optax.tree.norm(layer) for name, layer in grads.items()}
        step_metrics = {
            "loss": loss,
            "accuracy": accuracy,
            "learning_rate": optim.current_learning_rate(opt_state) * rate_scale,
            "grad_norm": optax.tree.norm(layer_grad_norms),
            "param_norm": optax.tree.norm(params),
            "layer_grad_norms": layer_grad_norms,  # also with train.diagnostics off: XLA compiles a faster step so
        }
        return new_state, step_metrics

    return train_step


def evaluated(state: dict) -> dict:
    """The state whose parameters evaluation, the best checkpoint's test and prediction use: the moving average's
    (``state['ema']``, with ``train.ema_decay`` > 0), else Lookahead's slow weights (``state['slow']``, with
    ``optim.lookahead`` > 0), else the trained ones."""
    if "ema" in state:
        return {**state, "params": state["ema"]["params"], "model_state": state["ema"]["model_state"]}
    if "slow" in state:
        return {**state, "params": state["slow"]}
    return state


def eval_step_fn(model, loss_name: str, compute_dtype: str = "float32", test_time_views=None, diagnostics=False):
    """The pure evaluation step over one padded batch.

    Args:
      model: a Flax module.
      loss_name: 'cross_entropy' or 'mse'.
      compute_dtype: 'float32' or 'bfloat16'.
      test_time_views: images (N, H, W, C) -> a list of such arrays (e.g. ``data.test_time_views``) whose outputs
        are averaged before the loss and the accuracy (test-time augmentation); None: the images alone.
      diagnostics: also return which units of each ReLU were active (``train.diagnostics``).

    Returns:
      (params, model_state, images, labels, batch_index, weights) -> {'sums': the batch's sums as one vector
      (4 + K * K,): loss, correct, count, top-5 correct, then the confusion counts (K, K) (rows: true classes,
      columns: predicted), each example weighted by ``weights`` (0 for padding); 'active': {ReLU layer: (C,) > 0
      where the unit was active in the batch} (empty without ``diagnostics``)}. Summed over batches, both give the
      split's :func:`evaluation_of`.
    """
    loss_fn, scores_fn = LOSSES[loss_name]
    outputs_of = outputs_and_activity_fn(model, compute_dtype, test_time_views, diagnostics)

    def eval_step(params, model_state, images, labels, batch_index, weights):
        x, y = images[batch_index], labels[batch_index]
        outputs, active = outputs_of({"params": params, **model_state}, x)
        scores = scores_fn(outputs)
        num_classes = scores.shape[-1]
        predicted = jnp.argmax(scores, axis=-1)
        correct = (predicted == y).astype(jnp.float32)
        in_top5 = jnp.any(lax.top_k(scores, min(5, num_classes))[1] == y[:, None], axis=-1).astype(jnp.float32)
        confusion = jax.nn.one_hot(y, num_classes).T @ (jax.nn.one_hot(predicted, num_classes) * weights[:, None])
        sums = [jnp.sum(loss_fn(outputs, y) * weights), jnp.sum(correct * weights), jnp.sum(weights)]
        sums = jnp.concatenate([jnp.stack([*sums, jnp.sum(in_top5 * weights)]), confusion.ravel()])
        return {"sums": sums, "active": active}

    return eval_step


def eval_outputs_fn(model, compute_dtype: str = "float32", test_time_views=None):
    """The model's evaluation outputs as a function, for prediction and export.

    Args:
      model: a Flax module.
      compute_dtype: 'float32' or 'bfloat16'.
      test_time_views: as for :func:`eval_step_fn`.

    Returns:
      (variables, images (N, H, W, C)) -> float32 (N, num_classes), averaged over the views.
    """
    outputs_of = outputs_and_activity_fn(model, compute_dtype, test_time_views)
    return lambda variables, images: outputs_of(variables, images)[0]


def outputs_and_activity_fn(model, compute_dtype: str = "float32", test_time_views=None, diagnostics=False):
    """As :func:`eval_outputs_fn`, returning (outputs, activity): with ``diagnostics``, activity is
    {ReLU layer: (C,)}, how many of the views each unit was active in (:func:`cnnjax.nn.unit_activity`), else {}."""
    dtype = jnp.dtype(compute_dtype)
    views_of = test_time_views or (lambda images: [images])

    def outputs_of(variables, images):
        variables, outputs, activities = cast_floats(variables, dtype), [], []
        for view in views_of(images):
            view = cast_floats(view, dtype)
            if diagnostics:
                output, sown = model.apply(variables, view, train=False, mutable=[cnn.DIAGNOSTICS])
                activities.append(cnn.unit_activity(sown))
            else:
                output = model.apply(variables, view, train=False)
            outputs.append(output)
        activity = jax.tree_util.tree_map(lambda *counts: sum(counts), *activities) if activities else {}
        return sum(outputs).astype(jnp.float32) / len(outputs), activity

    return outputs_of


def with_matmul_precision(fn, precision: str):
    """``fn`` tracing its operations under ``jax.default_matmul_precision(precision)`` ('default': as it is), so that
    the precision is part of the jitted program whatever the caller's context."""
    if precision == "default":
        return fn

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with jax.default_matmul_precision(precision):
            return fn(*args, **kwargs)

    return traced


def _view_items(config) -> tuple:
    """``data.test_time_views``'s keyword arguments for ``config``, as hashable items."""
    return (("flip", config.data.test_time_flip), ("shift", config.data.test_time_shift))


@functools.lru_cache(maxsize=8)
def _cached_steps(model, optim_items: tuple, steps_per_epoch: int, num_epochs: int, loss: str, label_smoothing: float,
                  augment_items: tuple, view_items: tuple, compute_dtype: str, matmul_precision: str,
                  xla: backend.XlaOptions, freeze: str, recipe_items: tuple, diagnostics: bool):  # fmt: skip
    optim_config = ml_collections.ConfigDict(dict(optim_items))
    optimizer = optim.make_optimizer(optim_config, steps_per_epoch, num_epochs, freeze)
    augment = functools.partial(data.augment, **dict(augment_items))
    train_fn = train_step_fn(model, optimizer, loss, augment, compute_dtype, label_smoothing, **dict(recipe_items))
    views = functools.partial(data.test_time_views, **dict(view_items))
    eval_fn = eval_step_fn(model, loss, compute_dtype, views, diagnostics)
    train_fn, eval_fn = (with_matmul_precision(fn, matmul_precision) for fn in (train_fn, eval_fn))
    options = xla.compiler_options()
    train_step = jax.jit(train_fn, donate_argnums=0, compiler_options=options)
    return optimizer, train_fn, train_step, eval_fn, jax.jit(eval_fn, compiler_options=options)


def compiled_steps(config, model, steps_per_epoch: int, preprocessing: data.Preprocessing | None = None):
    """The steps of ``config``, shared by every run in this process whose model, optimizer structure, loss and
    augmentations agree: trials that differ only in ``optim.INJECTED`` values or the seed reuse the compiled steps
    (the values live in the optimizer state; set them with ``optim.with_hyperparams``).

    Args:
      config: the run's config.
      model: a Flax module.
      steps_per_epoch: training steps per epoch (schedules are in steps).
      preprocessing: the run's fitted preprocessing, which the photometric augmentation policies (colour jitter,
        RandAugment, TrivialAugment) undo and redo; needed only by them.

    Returns:
      (optimizer, train_fn, jitted train step, eval_fn, jitted eval step).
    """
    defaults = config_lib.base_config().optim
    optim_items = tuple(sorted((k, defaults[k] if k in optim.INJECTED else v) for k, v in config.optim.items()))
    augment_items = _augment_items(config, preprocessing)
    return _cached_steps(
        model, optim_items, steps_per_epoch, config.train.num_epochs, config.train.loss, config.train.label_smoothing,
        augment_items, _view_items(config), config.train.compute_dtype, config.train.matmul_precision,
        backend.XlaOptions.of(config.train),
        config.train.freeze, _recipe_items(config), config.train.diagnostics,
    )  # fmt: skip


def _augment_items(config, preprocessing: data.Preprocessing | None) -> tuple:
    """The arguments of ``data.augment`` that ``config`` sets, as hashable items."""
    policies = data.Policies(*(config.data[k] for k in data.Policies._fields))
    constants = ()
    if policies.photometric:
        if preprocessing is None or preprocessing.scale is None:
            raise ValueError("colour jitter, RandAugment and TrivialAugment need the run's per-channel "
                             "preprocessing (not data.zca): pass compiled_steps(..., preprocessing)")  # fmt: skip
        constants = (
            ("scale", tuple(map(float, preprocessing.scale))),
            ("shift", tuple(map(float, preprocessing.shift))),
        )
    return (
        ("crop_padding", config.data.random_crop_padding),
        ("flip", config.data.random_flip),
        ("translate", config.data.random_translate),
        ("policies", policies),
        *constants,
    )


def augmentation(config, preprocessing: data.Preprocessing | None = None):
    """(key, images (N, H, W, C)) -> (augmented images, lam): what the training step does to a batch of
    preprocessed images before the model sees it (``lam`` < 1 where Mixup/CutMix mixed it with ``images[::-1]``)."""
    augment = functools.partial(data.augment, **dict(_augment_items(config, preprocessing)))
    mixing = dict(_recipe_items(config))["mixing"]

    def apply(key, images):
        x = augment(jax.random.split(key)[0], images)
        return data.mix(jax.random.fold_in(key, 2), x, mixing) if mixing.enabled else (x, jnp.ones(()))

    return apply


def _recipe_items(config) -> tuple:
    """The training step's recipe options of ``config`` as hashable items (see :func:`train_step_fn`)."""
    d = config.data
    mixing = data.Mixing(d.mixup_alpha, d.cutmix_alpha, d.mix_prob, d.mix_switch_prob)
    return (("ema_decay", config.train.ema_decay), ("grad_accum_steps", config.train.grad_accum_steps),
            ("mixing", mixing))  # fmt: skip


class Evaluation(NamedTuple):
    """Metrics of one split: mean loss, accuracy, top-5 accuracy, confusion counts (K, K) (rows: true classes), and
    with ``train.diagnostics`` the fraction of dead units (never active on the split) of each ReLU layer."""

    loss: float
    accuracy: float
    top5_accuracy: float
    confusion: np.ndarray
    dead_units: dict[str, float] = {}


def evaluate(eval_step, state, images, labels, batch_size: int, mesh, limit: int = 0) -> Evaluation:
    """The metrics of ``state`` over every example of a split; the padded last batch is weighted out.

    Args:
      eval_step: a jitted :func:`eval_step_fn`.
      state: the training state (its params and model_state are used).
      images: (N, H, W, C) float32.
      labels: (N,).
      batch_size: examples per evaluation step.
      mesh: the device mesh batches are sharded over, or None.
      limit: > 0 evaluates only the first ``limit`` batches (``train.limit_batches``: smoke runs).

    Returns:
      The split's :class:`Evaluation`.
    """
    return evaluation_of(summed_over_batches(eval_step, state, images, labels, batch_size, mesh, limit))


def summed_over_batches(eval_step, state, images, labels, batch_size: int, mesh=None, limit: int = 0) -> dict:
    """``eval_step``'s outputs summed over the padded batches of a split (arguments as for :func:`evaluate`; also
    used with a vmapped step over a sweep group's stacked states, whose batches are not sharded: ``mesh`` None)."""
    index, weights = data.eval_batches(len(labels), batch_size)
    if limit:
        index, weights = index[:limit], weights[:limit]
    totals = None
    for batch_index, batch_weights in zip(index, weights):
        if mesh is not None:
            batch_index, batch_weights = parallel.shard_batch((batch_index, batch_weights), mesh)
        sums = eval_step(state["params"], state["model_state"], images, labels, batch_index, batch_weights)
        totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
    return totals


def evaluation_of(totals: dict) -> Evaluation:
    """The metrics of a split from the eval step's outputs summed over its batches (see :func:`eval_step_fn`); a
    padding example repeats a real one, so it cannot make a dead unit look alive."""
    sums = np.asarray(totals["sums"], np.float64)
    loss_sum, correct, count, top5 = (float(v) for v in sums[:4])
    num_classes = math.isqrt(len(sums) - 4)
    confusion = np.rint(sums[4:]).astype(np.int64).reshape(num_classes, num_classes)
    dead = {layer: float(np.mean(np.asarray(active) == 0)) for layer, active in totals["active"].items()}
    return Evaluation(loss_sum / count, correct / count, top5 / count, confusion, dead)


def test_results(test: Evaluation, class_names) -> dict:
    """The test metrics ``results.json`` reports: accuracy, loss, top-5 accuracy, the confusion matrix (rows: true
    classes) and per-class precision, recall and F1 keyed by class name."""
    return {
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
        "top5_accuracy": test.top5_accuracy,
        "confusion_matrix": test.confusion.tolist(),
        "per_class": per_class_metrics(test.confusion, class_names),
        "class_names": list(class_names),
        "dead_units": test.dead_units,
    }


def per_class_metrics(confusion: np.ndarray, class_names) -> dict[str, dict[str, float]]:
    """{class name: {'precision', 'recall', 'f1', 'support'}} from confusion counts (K, K) (rows: true classes);
    a ratio with nothing to count (no example predicted as, or of, a class) is 0."""
    true_positives = np.diag(confusion).astype(np.float64)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros_like(true_positives), where=predicted > 0)
    recall = np.divide(true_positives, actual, out=np.zeros_like(true_positives), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    return {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
        for name, p, r, f, n in zip(class_names, precision, recall, f1, actual)
    }


def count_params(params) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


def trainable_params(params, freeze: str) -> int:
    """How many of ``params``' values train with ``train.freeze=freeze``; a pattern that matches no parameter is a
    ValueError listing the parameter paths."""
    if not freeze:
        return count_params(params)
    mask = optim.frozen_mask(freeze)(params)
    frozen = sum(math.prod(p.shape) for p, m in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask))
                 if m)  # fmt: skip
    if not frozen:
        paths = [optim.parameter_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        raise ValueError(
            f"config.train.freeze={freeze!r} matches no parameter; the model's parameters are {', '.join(paths)}"
        )
    return count_params(params) - frozen


def merge_matching(fresh, donor) -> tuple[dict, list[str]]:
    """``fresh`` with every leaf replaced by ``donor``'s leaf of the same path and shape; returns the merged tree and
    the descriptions of the leaves kept fresh ('Dense_2/kernel: (84, 5) here, (84, 10) in the donor')."""
    donor_leaves = {optim.parameter_path(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(donor)[0]}
    kept = []

    def pick(path, leaf):
        name = optim.parameter_path(path)
        other = donor_leaves.get(name)
        if other is None or tuple(other.shape) != tuple(leaf.shape):
            kept.append(f"{name}: {tuple(leaf.shape)} here, {'absent' if other is None else tuple(other.shape)} "
                        "in the donor")  # fmt: skip
            return leaf
        return jnp.asarray(other, leaf.dtype)

    return jax.tree_util.tree_map_with_path(pick, fresh), kept


def warm_start(state: dict, source: str) -> tuple[dict, dict]:
    """``state`` with the parameters and model state (batch statistics) of the checkpoint ``source`` names (a run
    directory: its best checkpoint, else its latest; see ``checkpoint.find``) wherever their shapes agree; the
    others keep their fresh initialization. Returns (state, a report for ``results.json``)."""
    params, model_state, where = checkpoint.read_variables(source)
    new_params, params_kept = merge_matching(state["params"], params)
    new_model_state, state_kept = merge_matching(state["model_state"], model_state)
    loaded = len(jax.tree_util.tree_leaves(new_params)) - len(params_kept)
    if not loaded:
        raise ValueError(
            f"config.train.init_from={source!r}: none of {where}'s parameters fits this model (different "
            f"architecture?): {'; '.join(params_kept[:3])}"
        )
    reinitialized = params_kept + state_kept
    summary = f"warm start from {where}: {loaded} parameter arrays loaded"
    if reinitialized:
        summary += f"; re-initialized (shapes differ): {'; '.join(reinitialized)}"
    report = {"source": where, "loaded": loaded, "reinitialized": reinitialized, "summary": summary}
    warmed = {**state, "params": new_params, "model_state": new_model_state}
    if "slow" in state:
        warmed["slow"] = jax.tree_util.tree_map(jnp.copy, new_params)
    if "ema" in state:  # the moving average starts from the donor's weights too
        warmed["ema"] = jax.tree_util.tree_map(jnp.copy, {"params": new_params, "model_state": new_model_state})
    return warmed, report


# ----------------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------------


def epoch_steps(config, num_examples: int) -> int:
    """Training steps per epoch: full batches, at most ``train.limit_batches`` (smoke runs) when it is > 0."""
    steps = data.steps_per_epoch(num_examples, config.data.batch_size)
    return min(steps, config.train.limit_batches) if config.train.limit_batches else steps


@dataclasses.dataclass
class Budget:
    """``train.max_steps`` and ``train.max_time`` (minutes of training, those of earlier processes of the run
    included): :meth:`spent` names the one that ran out."""

    max_steps: int
    max_seconds: float
    trained_before_s: float
    started: float = dataclasses.field(default_factory=time.time)

    @classmethod
    def of(cls, train_config, workdir: Path | None = None) -> Budget:
        records = metrics.read_records(workdir / "metrics.jsonl") if workdir else []
        before = sum(r["elapsed_s"] for r in records if r["kind"] == "epoch")
        return cls(train_config.max_steps, 60.0 * train_config.max_time, before)

    def spent(self, step: int, check_time: bool) -> str | None:
        """'train.max_steps=N' or 'train.max_time=M' when that budget is spent at ``step``, else None. The clock is
        read only when ``check_time`` (all processes of a run agree, taking process 0's answer)."""
        if self.max_steps and step >= self.max_steps:
            return f"train.max_steps={self.max_steps}"
        if self.max_seconds and check_time:
            out = self.trained_before_s + time.time() - self.started >= self.max_seconds
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                out = bool(multihost_utils.broadcast_one_to_all(np.asarray(out)))
            if out:
                return f"train.max_time={self.max_seconds / 60:g}"
        return None


def _train_record(step, epoch, step_metrics, epoch_sums, images_per_sec, diagnostics: bool) -> dict:
    """A logged training step's record; ``diagnostics``: with each layer's gradient norm (``grad_norm/<layer>``)."""
    fetched = jax.device_get(step_metrics)
    layer_norms = fetched["layer_grad_norms"] if diagnostics else {}
    loss_sum, accuracy_sum, steps = (float(v) for v in np.asarray(epoch_sums, np.float64))
    return {
        "kind": "train",
        "step": step,
        "epoch": epoch + 1,
        "loss": float(fetched["loss"]),
        "accuracy": float(fetched["accuracy"]),
        "epoch_loss": loss_sum / steps,
        "epoch_accuracy": accuracy_sum / steps,
        "learning_rate": float(fetched["learning_rate"]),
        "grad_norm": float(fetched["grad_norm"]),
        "param_norm": float(fetched["param_norm"]),
        "images_per_sec": images_per_sec,
        **{f"grad_norm/{name}": float(norm) for name, norm in layer_norms.items()},
    }


def _epoch_line(record: dict, num_epochs: int) -> str:
    line = (
        f"epoch {record['epoch']:>3}/{num_epochs}  train loss {record['train_loss']:.4f} "
        f"acc {100 * record['train_accuracy']:6.2f}%"
    )
    if "val_loss" in record:
        line += f"  val loss {record['val_loss']:.4f} acc {100 * record['val_accuracy']:6.2f}%"
    return (
        line
        + f"  lr {record['learning_rate']:.2e}  {record['elapsed_s']:6.1f} s  {record['images_per_sec']:,.0f} img/s"
    )


def train_and_evaluate(config, workdir: str | Path, epoch_callback=None) -> dict:
    """Trains and evaluates the experiment ``config`` in ``workdir``; resumes if ``workdir`` holds checkpoints.

    Args:
      config: a locked experiment config (``experiments/NAME.py:get_config()``), sections data, model, optim, train.
      workdir: the run directory; created if missing, resumed if it holds checkpoints, returned as is if it holds
        this config's finished run.
      epoch_callback: ``(epoch, val_accuracy) -> None``, called after each validation (e.g. to report to a pruner,
        which may raise to stop the run).

    Returns:
      The results dict also written to ``workdir/results.json``. The trained model: ``cnnjax.load(workdir)``.

    Raises:
      TrainingDiverged: after writing ``status: diverged``, when the loss becomes non-finite.
      preemption.Interrupted: after a checkpoint and ``status: interrupted``, on SIGTERM or SIGINT.
      ValueError: naming the key when the config cannot work; ``rundir.RunDirectoryError`` (a ValueError) when
        ``workdir`` cannot be used, another process is using it, or a write there fails.
    """
    started = time.time()
    model = check_config(config)
    workdir = rundir.prepare(workdir)
    with rundir.exclusive(workdir) if parallel.is_chief() else contextlib.nullcontext():
        return _run(config, model, workdir, started, epoch_callback)


def _run(config, model, workdir: Path, started: float, epoch_callback) -> dict:
    """train_and_evaluate in a checked, locked ``workdir``: a finished run's results, or training with its outcome
    recorded in results.json."""
    results_path = workdir / "results.json"
    if _finished_with(workdir, config):
        metrics.log_line(f"{workdir} holds this finished run; its results stand (use a new --workdir to train again)")
        if parallel.is_chief() and not (workdir / run_card.CARD).exists():  # a run from before cards
            run_card.write_or_check(workdir, config, data.load_splits(config.data))
            metrics.log_line(f"wrote {workdir / run_card.CARD}: the run can now be used for prediction")
        return json.loads(results_path.read_text())
    if parallel.is_chief():
        metrics.write_json(workdir / "config.json", config.to_dict())
        metrics.write_json(results_path, {"status": "running"})
    try:
        with preemption.handling():
            return _train(config, model, workdir, started, epoch_callback)
    except (TrainingDiverged, preemption.Interrupted):
        raise
    except BaseException as error:
        if parallel.is_chief():
            status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            with contextlib.suppress(OSError, rundir.RunDirectoryError):  # a full disk: the error itself matters
                metrics.write_json(results_path, {"status": status, "error": f"{type(error).__name__}: {error}"})
        raise


def dry_run(config) -> dict:
    """One training step and one evaluation step of ``config`` on its real data and shapes, writing nothing
    (Lightning's ``fast_dev_run``): what a long run would fail on, found in seconds.

    Returns:
      {'image_shape', 'steps_per_epoch', 'train_loss', 'eval_loss', 'compile_and_step_s'}.
    """
    model = check_config(config)
    splits = data.load_splits(config.data)
    check_against_data(model, config.data, splits)
    steps_per_epoch = epoch_steps(config, len(splits.train[1]))
    started = time.time()
    optimizer, _, train_step, _, eval_step = compiled_steps(config, model, steps_per_epoch, splits.preprocessing)
    state, key = run_state(config, model, optimizer, splits.image_shape)
    mesh = parallel.make_mesh(config.train.num_devices)
    state, (images, labels) = parallel.replicate(state, mesh), parallel.replicate(splits.train, mesh)
    batch = data.train_batches(len(labels), config.data.batch_size, seed=config.train.seed, epoch=0)[0]
    state, step_metrics = train_step(state, images, labels, parallel.shard_batch(batch, mesh), key)
    train_loss = float(step_metrics["loss"])
    split = parallel.replicate(splits.validation if len(splits.validation[1]) else splits.test, mesh)
    val = evaluate(eval_step, state, *split, config.data.eval_batch_size, mesh, limit=1)
    return {"image_shape": list(splits.image_shape), "steps_per_epoch": steps_per_epoch, "train_loss": train_loss,
            "eval_loss": val.loss, "compile_and_step_s": time.time() - started}  # fmt: skip


def _finished_with(workdir: Path, config) -> bool:
    """Whether ``workdir`` holds a finished run of exactly ``config`` (a changed config, e.g. more epochs, resumes
    training from the last checkpoint instead)."""
    results, saved = workdir / "results.json", workdir / "config.json"
    if not (results.exists() and saved.exists()) or json.loads(results.read_text()).get("status") != "done":
        return False
    return json.loads(saved.read_text()) == json.loads(json.dumps(config.to_dict()))


def _train(config, model, workdir: Path, started: float, epoch_callback=None) -> dict:
    c = config.train
    chief = parallel.is_chief()
    splits = data.load_splits(config.data)
    check_against_data(model, config.data, splits)
    if c.freeze:  # before compiling: a pattern that matches nothing is an error
        trainable_params(models.abstract_init(model, splits.image_shape)["params"], c.freeze)
    if chief:
        run_card.write_or_check(workdir, config, splits)
    mesh = parallel.make_mesh(c.num_devices)
    train_images, train_labels = parallel.replicate(splits.train, mesh)
    val_images, val_labels = parallel.replicate(splits.validation, mesh)
    test_images, test_labels = parallel.replicate(splits.test, mesh)
    has_validation = len(splits.validation[1]) > 0
    batch_size = config.data.batch_size
    steps_per_epoch = epoch_steps(config, len(splits.train[1]))
    optimizer, _, train_step, _, eval_step = compiled_steps(config, model, steps_per_epoch, splits.preprocessing)
    state, train_key = run_state(config, model, optimizer, splits.image_shape)
    trainable = trainable_params(state["params"], c.freeze)
    checkpoints = Checkpoints(workdir / "checkpoints", c.keep_checkpoints)
    meta = initial_meta()
    resuming = checkpoints.latest_step() is not None
    if not resuming and c.init_from:
        state, meta["warm_start"] = warm_start(state, c.init_from)
        metrics.log_line(meta["warm_start"]["summary"])
    state = parallel.replicate(state, mesh)
    if resuming:
        latest, state, meta = checkpoints.restore_latest(state)
        metrics.log_line(f"resuming from the checkpoint at step {latest} in {workdir}")
    writer = metrics.MetricsWriter(workdir, int(state["step"]), c.loggers) if chief else metrics.NullWriter()
    frozen = f", {trainable:,} trainable (train.freeze={c.freeze!r})" if c.freeze else ""
    metrics.log_line(
        f"{config.model.name} ({count_params(state['params']):,} params{frozen}) on {config.data.name}: "
        f"{len(splits.train[1]):,} train / {len(splits.validation[1]):,} validation / {len(splits.test[1]):,} test, "
        f"{steps_per_epoch} steps per epoch on {mesh.size} device(s); run directory {workdir}"
    )
    if not resuming and c.init_from and has_validation:
        start = evaluate(eval_step, evaluated(state), val_images, val_labels, config.data.eval_batch_size, mesh,
                         limit=c.limit_batches)  # fmt: skip
        meta["warm_start"].update(val_loss=start.loss, val_accuracy=start.accuracy)
        writer.write({"kind": "warm_start", "step": 0, "val_loss": start.loss, "val_accuracy": start.accuracy})
        metrics.log_line(f"warm start: validation accuracy {100 * start.accuracy:.2f}% before training")
    step, first_step_s, first_step_at, stopped = int(state["step"]), None, None, None
    budget = Budget.of(c, workdir)
    plateau_step = jax.jit(functools.partial(optim.plateau_update, config.optim))
    evaluate_split = functools.partial(evaluate, eval_step, batch_size=config.data.eval_batch_size, mesh=mesh,
                                       limit=c.limit_batches)  # fmt: skip
    preemption.start_polling()  # from here on a signal stops the run at the next step, with a checkpoint
    for epoch in range(step // steps_per_epoch, c.num_epochs):
        if meta["stopped_early"] or meta.get("converged") or (stopped := budget.spent(step, check_time=False)):
            break
        offset = step - epoch * steps_per_epoch
        if offset == 0:
            state["epoch_sums"] = parallel.replicate(np.zeros(3, np.float32), mesh)
        batches = data.train_batches(len(splits.train[1]), batch_size, seed=c.seed, epoch=epoch)
        bar = metrics.progress_bar(steps_per_epoch, offset, f"epoch {epoch + 1}/{c.num_epochs}", enabled=chief)
        epoch_start = interval_start = time.time()
        interval_steps, epoch_losses = 0, []
        for i in range(offset, steps_per_epoch):
            batch_index = parallel.shard_batch(batches[i], mesh)
            state, step_metrics = train_step(state, train_images, train_labels, batch_index, train_key)
            step += 1
            interval_steps += 1
            if first_step_s is None:
                jax.block_until_ready(step_metrics)
                first_step_at = time.time()  # Unix time: bench/startup.py measures it from the command's start
                first_step_s = first_step_at - started
            # the clock is read where the loop syncs with the device anyway
            stopped = budget.spent(step, check_time=step % c.log_every == 0 or i == steps_per_epoch - 1)
            last = i == steps_per_epoch - 1 or stopped is not None
            if step % c.log_every == 0 or last:
                # steps are dispatched asynchronously: time the interval when its last step has finished
                jax.block_until_ready(step_metrics)
                elapsed = time.time() - interval_start
                record = _train_record(step, epoch, step_metrics, state["epoch_sums"],
                                       interval_steps * batch_size / elapsed, c.diagnostics)  # fmt: skip
                if not all(math.isfinite(record[k]) for k in ("loss", "epoch_loss", "grad_norm")):
                    bar.close()
                    _diverged(workdir, step, record, checkpoints, writer)
                writer.write(record)
                average_grad_norm(meta, record["grad_norm"])
                epoch_losses.append(record["loss"])
                postfix = {"loss": f"{record['epoch_loss']:.4f}", "acc": f"{100 * record['epoch_accuracy']:.2f}%"}
                bar.set_postfix(postfix, refresh=False)
                bar.update(interval_steps)  # finished steps only: its rate and ETA are not the dispatch's
                interval_start, interval_steps = time.time(), 0
            if not last and (signum := preemption.requested(step)):  # an epoch's end: below
                bar.close()
                _interrupted(workdir, step, state, meta, checkpoints, writer, signum)
            if c.checkpoint_every and step % c.checkpoint_every == 0 and not last:
                checkpoints.save(step, state, meta)
            if stopped:
                break
        bar.close()
        epoch_time = time.time() - epoch_start
        images_per_sec = (step - epoch * steps_per_epoch - offset) * batch_size / epoch_time
        val = None
        if has_validation and ((epoch + 1) % c.eval_every == 0 or epoch + 1 == c.num_epochs or stopped):
            val = evaluate_split(evaluated(state), val_images, val_labels)
            raw = evaluate_split(state, val_images, val_labels) if "ema" in state else None
            if update_best(meta, epoch + 1, val, c):
                meta["best_step"] = step
            if "plateau" in state:
                state["plateau"] = plateau_step(state["plateau"], val.loss)
        epoch_record = make_epoch_record(
            step, epoch + 1, np.asarray(state["epoch_sums"]), record["learning_rate"], epoch_time, images_per_sec, val
        )
        if val is not None and raw is not None:  # both ways: the moving average's (above) and the trained weights'
            epoch_record.update(val_loss_raw=raw.loss, val_accuracy_raw=raw.accuracy)
        if val is not None and epoch_callback is not None:
            epoch_callback(epoch + 1, epoch_record["val_accuracy"])
        writer.write(epoch_record)
        metrics.log_line(_epoch_line(epoch_record, c.num_epochs))
        if c.loss == "cross_entropy" and at_chance_level(
            [*epoch_losses, epoch_record["train_loss"]], splits.num_classes
        ):
            chance = math.log(splits.num_classes)
            metrics.log_line("warning: " + CHANCE_WARNING.format(k=splits.num_classes, chance=chance, epoch=epoch + 1))
            meta.setdefault("chance_level_epochs", []).append(epoch + 1)
        if val is not None and (dead := mostly_dead_layers(val)) and "dead_units_epoch" not in meta:
            metrics.log_line("warning: " + DEAD_UNITS_WARNING.format(layers=", ".join(dead), epoch=epoch + 1))
            meta["dead_units_epoch"] = epoch + 1
        if not stopped and converged(c, meta, epoch + 1, step, epoch_record["train_loss"]):
            criterion = meta["converged"]
            metrics.log_line(f"converged at epoch {epoch + 1}: {criterion['criterion']} holds "
                             f"({criterion['value']:.4g})")  # fmt: skip
        if meta.get("best_step") == step:  # first: the periodic checkpoint of the step is then its copy
            checkpoints.save_best(step, state, meta)
        checkpoints.save(step, state, meta)
        if stopped:
            metrics.log_line(f"stopped at step {step}: the budget {stopped} is spent")
            break
        ended = meta["stopped_early"] or meta.get("converged")
        if (signum := preemption.requested(step)) and epoch + 1 < c.num_epochs and not ended:
            _interrupted(workdir, step, state, meta, checkpoints, writer, signum)
    final_state, tested = _tested_state(checkpoints, state, meta, steps_per_epoch, has_validation)
    test = evaluate_split(evaluated(final_state), test_images, test_labels)
    writer.write({"kind": "test", "step": step, "test_loss": test.loss, "test_accuracy": test.accuracy,
                  "test_top5_accuracy": test.top5_accuracy})  # fmt: skip
    title = f"{config.model.name} on {config.data.name}"
    if chief:
        accuracy_title = f"{title}: test accuracy {100 * test.accuracy:.2f}%"
        writer.figure("test/confusion_matrix", plots.confusion_figure(test.confusion, splits.class_names,
                                                                      accuracy_title), step)  # fmt: skip
    records = metrics.read_records(workdir / "metrics.jsonl")
    epoch_records = [r for r in records if r["kind"] == "epoch"]  # also those of the processes before a resume
    train_time = sum(r["elapsed_s"] for r in epoch_records)
    if chief:
        writer.figure("learning_curves", plots.learning_curves(records, workdir / "learning_curves.png", title), step)
    results = run_results(
        test, splits.class_names, meta if has_validation else None, epochs=step // steps_per_epoch,
        params=count_params(final_state["params"]), train_time_s=train_time, wall_time_s=time.time() - started,
        steps=step, trainable_params=trainable, time_to_first_step_s=first_step_s, first_step_at=first_step_at,
        tested=tested,
        stopped=stop_reason(meta, stopped), budget=stopped, convergence=meta.get("converged"),
        chance_level_epochs=meta.get("chance_level_epochs", []), layer_grad_norms=last_layer_grad_norms(records),
        images_per_sec=sum(r["images_per_sec"] * r["elapsed_s"] for r in epoch_records) / max(train_time, 1e-9),
    )  # fmt: skip
    writer.hyperparameters(config.to_dict(), {k: results[k] for k in ("test_accuracy", "test_loss", "val_accuracy")
                                              if results.get(k) is not None})  # fmt: skip
    writer.close()
    checkpoints.close()
    if "warm_start" in meta:
        results["warm_start"] = meta["warm_start"]
    if chief:
        metrics.write_json(workdir / "results.json", results)
    metrics.log_line(
        f"test accuracy {100 * test.accuracy:.2f}% (best epoch {results['best_epoch']}), "
        f"{results['wall_time_s']:.0f} s in all; results in {workdir / 'results.json'}"
    )
    return results


# ----------------------------------------------------------------------------------------------------------------------
# Run bookkeeping, shared by a solo run and the members of a vectorized sweep group (cnnjax.sweep.train_group)
# ----------------------------------------------------------------------------------------------------------------------


def initial_meta() -> dict:
    """A run's early-stopping and convergence bookkeeping before its first validation (saved with every
    checkpoint)."""
    return {"best_val_accuracy": -1.0, "best_epoch": 0, "evals_without_improvement": 0, "stopped_early": False}


def update_best(meta: dict, epoch: int, val: Evaluation, train_config) -> bool:
    """Records one validation result in a run's ``meta`` (early stopping's bookkeeping).

    Args:
      meta: the run's meta dict; its best metrics and epoch, the evaluations since the best, and whether
        ``train.early_stopping_patience`` of them have passed are updated in place.
      epoch: the epoch evaluated.
      val: its validation metrics.
      train_config: the ``train`` section: ``early_stopping_metric`` says which of accuracy (higher) and loss
        (lower) is better, ``early_stopping_min_delta`` the smallest improvement that counts, and
        ``early_stopping_patience`` the evaluations without one before stopping (0: never).

    Returns:
      Whether ``epoch`` is the new best.
    """
    delta = train_config.early_stopping_min_delta
    if train_config.early_stopping_metric == "val_loss":
        better = "best_val_loss" not in meta or val.loss < meta["best_val_loss"] - delta
    else:
        better = val.accuracy > meta["best_val_accuracy"] + delta or meta["best_epoch"] == 0
    if better:
        meta.update(best_val_accuracy=val.accuracy, best_val_loss=val.loss, best_epoch=epoch,
                    evals_without_improvement=0)  # fmt: skip
        return True
    meta["evals_without_improvement"] += 1
    patience = train_config.early_stopping_patience
    meta["stopped_early"] = bool(patience) and meta["evals_without_improvement"] >= patience
    return False


def converged(train_config, meta: dict, epoch: int, step: int, train_loss: float) -> bool:
    """Checks the convergence criteria at an epoch's end and records the first that holds in ``meta['converged']``
    ({'criterion', 'value', 'epoch', 'step'}): ``train.stop_train_loss`` (the epoch's training loss at or below it)
    or ``train.stop_grad_norm`` (``meta['grad_norm_average']``, the moving average of the logged gradient norms, at
    or below it). Returns whether training should stop."""
    checks = (("stop_train_loss", train_loss), ("stop_grad_norm", meta.get("grad_norm_average")))
    for key, value in checks:
        if train_config[key] and value is not None and value <= train_config[key]:
            meta["converged"] = {"criterion": f"train.{key}={train_config[key]:g}", "value": value, "epoch": epoch,
                                 "step": step}  # fmt: skip
            return True
    return False


def average_grad_norm(meta: dict, grad_norm: float, decay: float = 0.9) -> None:
    """Updates ``meta['grad_norm_average']``, the exponential moving average (``decay`` per logged record) of the
    gradient norm that ``train.stop_grad_norm`` watches."""
    previous = meta.get("grad_norm_average")
    meta["grad_norm_average"] = grad_norm if previous is None else decay * previous + (1 - decay) * grad_norm


def at_chance_level(losses: list[float], num_classes: int, tolerance: float = 0.01) -> bool:
    """Whether every training loss of an epoch (its logged ones and its mean) lies within ``tolerance`` (relative) of
    ln(num_classes), the cross-entropy of a uniform prediction: the model is not learning."""
    chance = math.log(num_classes)
    return bool(losses) and all(abs(loss - chance) <= tolerance * chance for loss in losses)


CHANCE_WARNING = ("the model is not learning: the training loss stayed at chance level, ln({k}) = {chance:.4f}, for "
                  "epoch {epoch}; check the learning rate, the last layer, the labels")  # fmt: skip


DEAD_UNITS_WARNING = (
    "more than half of the units of {layers} are dead (never active on the validation split at "
    "epoch {epoch}): lower the learning rate or model.bias_init, or start from he_normal weights"
)


def mostly_dead_layers(evaluation: Evaluation, threshold: float = 0.5) -> list[str]:
    """The ReLU layers more than ``threshold`` of whose units were never active on the evaluated split."""
    return [layer for layer, fraction in evaluation.dead_units.items() if fraction > threshold]


def last_layer_grad_norms(records: list[dict]) -> dict[str, float]:
    """The per-layer gradient norms of the last logged training step (``grad_norm/<layer>`` of metrics.jsonl)."""
    last = next((r for r in reversed(records) if r["kind"] == "train"), {})
    return {key.removeprefix("grad_norm/"): value for key, value in last.items() if key.startswith("grad_norm/")}


def stop_reason(meta: dict, budget: str | None) -> str:
    """``results.json``'s ``stopped``: 'budget', 'convergence', 'early_stopping' or 'num_epochs'."""
    if budget:
        return "budget"
    if meta.get("converged"):
        return "convergence"
    return "early_stopping" if meta["stopped_early"] else "num_epochs"


def make_epoch_record(step: int, epoch: int, epoch_sums: np.ndarray, learning_rate: float, elapsed_s: float,
                      images_per_sec: float, val: Evaluation | None = None) -> dict:  # fmt: skip
    """The ``kind: epoch`` record of metrics.jsonl.

    Args:
      step, epoch: where the run is.
      epoch_sums: the epoch's running (loss, accuracy, steps) sums (3,).
      learning_rate: the rate at the epoch's end.
      elapsed_s: the run's training time so far.
      images_per_sec: the epoch's training throughput.
      val: the validation metrics, or None.

    Returns:
      The record: training loss and accuracy, the learning rate, timing, and validation metrics when given.
    """
    loss_sum, accuracy_sum, steps = (float(v) for v in np.asarray(epoch_sums, np.float64))
    record = {
        "kind": "epoch", "step": step, "epoch": epoch, "train_loss": loss_sum / steps,
        "train_accuracy": accuracy_sum / steps, "learning_rate": float(learning_rate), "elapsed_s": elapsed_s,
        "images_per_sec": images_per_sec,
    }  # fmt: skip
    if val is not None:
        record.update(val_loss=val.loss, val_accuracy=val.accuracy, val_top5_accuracy=val.top5_accuracy)
        record.update({f"dead_units/{layer}": fraction for layer, fraction in val.dead_units.items()})
    return record


def run_results(test: Evaluation, class_names, meta: dict | None, *, epochs: int, params: int, train_time_s: float,
                wall_time_s: float, **extra) -> dict:  # fmt: skip
    """A finished run's ``results.json``.

    Args:
      test: the test split's metrics.
      class_names: the dataset's class names (per-class results are keyed by them).
      meta: the run's meta (best validation accuracy and its epoch), or None without a validation split (the last
        epoch's parameters were tested).
      epochs, params, train_time_s, wall_time_s: the run's size and timing.
      **extra: further fields, written as given.

    Returns:
      The results dict with ``status: done`` and the test metrics of :func:`test_results`.
    """
    return {
        "status": "done",
        **test_results(test, class_names),
        "val_accuracy": meta["best_val_accuracy"] if meta else None,
        "best_epoch": meta["best_epoch"] if meta else epochs,
        "epochs": epochs,
        "stopped_early": bool(meta and meta["stopped_early"]),
        "params": params,
        "train_time_s": train_time_s,
        "wall_time_s": wall_time_s,
        **extra,
    }


def _tested_state(checkpoints: Checkpoints, state: dict, meta: dict, steps_per_epoch: int, has_validation: bool):
    """(state, which) whose parameters the test uses: the best checkpoint's. If it cannot be read, the periodic
    checkpoint of the best step (the same state), else the final state, with a warning."""
    if not has_validation:
        return state, "final"
    best = checkpoints.restore_best(state)
    if best is not None:
        return best[0], "best"
    best_step = meta.get("best_step", meta["best_epoch"] * steps_per_epoch)
    fallback = checkpoints.restore_latest(state, at_most=best_step)
    if fallback is not None and fallback[0] == best_step:
        metrics.log_line(f"warning: no readable best checkpoint; testing the periodic checkpoint of the best step "
                         f"{best_step} (the same parameters)")  # fmt: skip
        return fallback[1], f"periodic step {best_step}"
    metrics.log_line(f"warning: neither the best checkpoint nor a periodic one of its step {best_step} can be read; "
                     "testing the final parameters instead")  # fmt: skip
    return state, "final (best checkpoint unreadable)"


def _interrupted(workdir: Path, step: int, state: dict, meta: dict, checkpoints: Checkpoints, writer, signum: int):
    """Stops a run on a signal: a checkpoint of ``step``, ``status: interrupted``, then ``preemption.Interrupted``."""
    checkpoints.save(step, state, meta)
    writer.close()
    checkpoints.close()
    name = preemption.signal_name(signum)
    message = (f"interrupted by {name} at step {step}; the checkpoint is in {checkpoints.directory}: run the same "
               "command again to resume")  # fmt: skip
    if parallel.is_chief():
        metrics.write_json(
            workdir / "results.json", {"status": "interrupted", "step": step, "signal": name, "error": message}
        )
    raise preemption.Interrupted(message, signum)


def _diverged(workdir: Path, step: int, record: dict, checkpoints: Checkpoints, writer) -> None:
    last = checkpoints.latest_step()
    kept = "no checkpoint was written yet" if last is None else f"the last good checkpoint is step {last} in " \
        f"{checkpoints.directory}"  # fmt: skip
    message = (
        f"training diverged: the loss is {record['loss']} at step {step} (epoch {record['epoch']}, grad norm "
        f"{record['grad_norm']}); {kept}. Lower optim.learning_rate, add optim.clip_norm or warmup."
    )
    writer.write({**record, "kind": "diverged"})
    writer.close()
    checkpoints.close()
    if parallel.is_chief():
        metrics.write_json(
            workdir / "results.json", {"status": "diverged", "step": step, "last_checkpoint": last, "error": message}
        )
    raise TrainingDiverged(message)
