"""Experiment configs: the defaults every experiment starts from, model sections, and validation.

A config is an ``ml_collections.ConfigDict`` with sections ``data``, ``model``, ``optim`` and ``train``. Experiments
(``experiments/<name>.py``) start from :func:`base_config`, change what they need, and return it locked, so that a
misspelt key is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import re

import ml_collections

from cnnjax import metrics, models
from cnnjax.data.policies import parse_randaugment


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
    """The ``model`` section for model ``name`` (a family or a preset, ``models.list_models()``): its name and every
    field with its default, the preset's value, or the override."""
    family, preset = models.resolve(name)
    defaults = {f.name: f.default for f in dataclasses.fields(models.MODELS[family]) if f.name in models.fields(name)}
    fields = {**defaults, **preset}
    unknown = set(overrides) - set(fields)
    if unknown:
        models.get(name, **{k: overrides[k] for k in unknown})  # raises the error naming the closest fields
    return ml_collections.ConfigDict({"name": name, **fields, **overrides})


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by all experiments (modern LeNet on Fashion-MNIST with Adam)."""
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(
        {
            "name": "fashion_mnist",  # a TFDS name, or 'image_folder' (your own images in data_dir)
            "data_dir": ml_collections.config_dict.placeholder(str),  # the original files, or ROOT/train/<class>/*
            "tfds_dir": ml_collections.config_dict.placeholder(
                str
            ),  # TFDS's data directory (default ~/tensorflow_datasets)
            "image_size": 0,  # image_folder: resize every image to image_size x image_size (0: keep)
            "channels": 0,  # image_folder: 1 grayscale, 3 RGB (0: as decoded)
            "test_fraction": 0.1,  # no official test split (image_folder without test/): held out as it (split_seed)
            "batch_size": 128,
            "eval_batch_size": 1000,
            "validation_fraction": 0.1,  # held out from train, deterministically (split_seed)
            "validation_size": 0,  # > 0: hold out exactly this many instead
            "split_seed": 0,
            "balance": "none",  # none | undersample | oversample
            "pad_to": 0,  # > 0: zero-pad images to pad_to x pad_to (LeNet-5: 32)
            "standardize": True,  # per-channel mean/std of the training split
            "zca": False,  # ZCA whitening fitted on the training split (instead of standardize)
            "zca_epsilon": 0.1,
            "random_crop_padding": 0,  # augmentation: pad and randomly crop back
            "random_flip": False,  # augmentation: random left-right mirror
            "random_translate": 0.0,  # augmentation: random sub-pixel shift, in pixels
            "randaugment": "",  # timm-style RandAugment, e.g. 'rand-m9-n2' ('': off)
            "trivialaugment": False,  # TrivialAugment (wide): one random op at a random magnitude per image
            "color_jitter": 0.0,  # > 0: brightness, contrast (and on RGB saturation, hue / 4) jitter of this strength
            "random_scale": (1.0, 1.0),  # zoom by a factor uniform in (low, high) about the centre
            "random_erasing": 0.0,  # the probability of erasing a random rectangle (noise-filled, timm's 'pixel')
            "random_erasing_area": (0.02, 1 / 3),  # its area as a share of the image, (low, high)
            "mixup_alpha": 0.0,  # > 0: Mixup with lam ~ Beta(alpha, alpha) (timm's semantics; cross_entropy only)
            "cutmix_alpha": 0.0,  # > 0: CutMix with lam ~ Beta(alpha, alpha)
            "mix_prob": 1.0,  # the probability that a batch is mixed at all
            "mix_switch_prob": 0.5,  # with both alphas > 0: the probability of CutMix instead of Mixup
            "test_time_flip": False,  # evaluation averages the outputs of each image and its mirror image
            "test_time_shift": 0,  # > 0: ... and of its copies shifted by this many pixels up, down, left, right
        }
    )
    config.model = model_config("lenet")
    config.optim = ml_collections.ConfigDict(
        {
            "name": "adam",  # sgd | momentum | nesterov | adam | adamw | rmsprop
            "learning_rate": 1e-3,
            "momentum": 0.9,
            "nesterov": False,
            "beta1": 0.9,
            "beta2": 0.999,
            "eps": 1e-8,
            "rms_decay": 0.9,
            "weight_decay": 0.0,  # decoupled weight decay (AdamW style), on kernels only
            "l2": 0.0,  # coupled L2: adds l2 * 0.5 * sum(w ** 2) of the kernels to the loss
            "schedule": "constant",  # constant | step | exponential | cosine | cosine_restarts | polynomial | onecycle | plateau
            "warmup_epochs": 0.0,  # linear warmup from 0
            "decay_rate": 0.1,  # step: factor every decay_epochs; exponential: factor per decay_epochs
            "decay_epochs": 10.0,
            "clip_norm": 0.0,  # > 0: clip gradients to this global norm
            "restart_epochs": 10.0,  # cosine_restarts: the period of each cosine decay
            "poly_power": 1.0,  # polynomial: the exponent of the decay to 0 (1: linear)
            "onecycle_pct_start": 0.3,  # onecycle: the share of the run spent rising to the peak
            "plateau_factor": 0.1,  # plateau: the rate's factor when the validation loss stalls
            "plateau_patience": 3,  # plateau: validations without improvement before it falls
            "lookahead": 0,  # > 0: Lookahead (optax's) around the optimizer, syncing every this many steps
            "lookahead_alpha": 0.5,  # Lookahead's slow step size
        }
    )
    config.train = ml_collections.ConfigDict(
        {
            "num_epochs": 10,
            "seed": 0,
            "loss": "cross_entropy",  # cross_entropy | mse (one-of-c targets) | rbf (LeNet-5's RBF penalties)
            "label_smoothing": 0.0,  # cross_entropy only: weight of the uniform target in the training loss
            "eval_every": 1,  # epochs between validation passes
            "checkpoint_every": 0,  # steps between extra mid-epoch checkpoints (0: only at epoch ends)
            "keep_checkpoints": 3,
            "early_stopping_patience": 0,  # evaluations without a better validation metric (0: never stop)
            "early_stopping_metric": "val_accuracy",  # val_accuracy | val_loss: what 'better' (and the best epoch) means
            "early_stopping_min_delta": 0.0,  # an improvement smaller than this does not count
            "stop_train_loss": 0.0,  # > 0: converged when an epoch's training loss is at or below this
            "stop_grad_norm": 0.0,  # > 0: converged when the gradient norm's moving average is at or below this
            "diagnostics": True,  # per-layer gradient norms, dead ReLU units at each evaluation
            "ema_decay": 0.0,  # > 0: evaluate, test and predict with an exponential moving average of the weights
            "grad_accum_steps": 1,  # micro-batches of batch_size / k per optimizer step (batch norm sees them)
            "max_steps": 0,  # > 0: stop (checkpoint, validate, test) after this many training steps
            "max_time": 0.0,  # > 0: stop the same way after this many minutes of training
            "limit_batches": 0,  # > 0: smoke runs: at most this many training and evaluation batches per epoch
            "init_from": ml_collections.config_dict.placeholder(str),  # warm start: a run or checkpoint directory
            "freeze": "",  # a regex: parameters whose paths ('conv1/kernel') match are not trained
            "log_every": 50,  # steps between metric records
            "loggers": "tensorboard",  # besides metrics.jsonl, comma-separated: tensorboard, wandb, mlflow ('': none)
            "num_devices": 1,  # data parallelism over this many devices (0: all devices of all processes)
            "cpu_devices": 0,  # > 0: split the host CPU into this many devices (parallel.split_cpu; 0: JAX's one)
            "compute_dtype": "float32",  # float32 | bfloat16 (mixed precision: float32 parameters and optimizer)
            # JAX's default_matmul_precision while tracing the steps: 'bfloat16' multiplies float32 convolutions in
            # bfloat16 (on CPUs with AVX512_BF16 or AMX: oneDNN's; on GPUs and TPUs: XLA's), activations stay float32
            "matmul_precision": "default",
            "xla_cpu_ynn_fusion": "",  # XLA:CPU ops run by YNNPACK, e.g. 'dot,eltwise,reduce' ('': cnnjax.backend's)
            "xla_cpu_cse": True,  # False: XLA:CPU without common-subexpression elimination (backend.XlaOptions)
            "xla_gpu_deterministic": True,  # XLA:GPU's deterministic ops: bitwise-identical runs and resumes on GPUs
        }
    )
    return config


def modern_recipe(config: ml_collections.ConfigDict, *, learning_rate: float, num_epochs: int):
    """The training recipe of the deeper zoo models, set on ``config``: random crops (2 pixels) and flips, SGD with
    Nesterov momentum 0.9 and L2 5e-4, a cosine schedule after one warmup epoch."""
    config.data.random_crop_padding = 2
    config.data.random_flip = True
    config.optim.name = "nesterov"
    config.optim.learning_rate = learning_rate
    config.optim.l2 = 5e-4
    config.optim.schedule = "cosine"
    config.optim.warmup_epochs = 1.0
    config.train.num_epochs = num_epochs
    return config


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf key of a config as a dotted path, e.g. 'optim.learning_rate'."""
    keys = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        keys.extend(flat_keys(value, f"{path}.") if isinstance(value, ml_collections.ConfigDict) else [path])
    return keys


def closest_keys(key: str, config: ml_collections.ConfigDict) -> list[str]:
    """The config keys most similar to ``key`` (for error messages), abbreviations included ('lr' for
    'learning_rate')."""
    known = flat_keys(config)
    leaf = key.split(".")[-1]
    abbreviated = [k for k in known if "".join(word[0] for word in k.split(".")[-1].split("_")) == leaf]
    similar = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    same_section = [k for k in known if k.split(".")[0] == key.split(".")[0]]
    return list(dict.fromkeys(abbreviated + similar))[:4] or same_section[:6]


def _check(condition: bool, key: str, value, requirement: str) -> None:
    if not condition:
        raise ValueError(f"config.{key}={value!r} is invalid: {requirement}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Rejects config values that cannot work, with one line naming the key; the optimizer and the model's shapes
    are checked by ``optim.validate`` and ``train.check_model``."""
    data, train = config.data, config.train
    _check(data.batch_size >= 1, "data.batch_size", data.batch_size, "must be >= 1")
    _check(data.eval_batch_size >= 1, "data.eval_batch_size", data.eval_batch_size, "must be >= 1")
    _check(0.0 <= data.validation_fraction < 1.0, "data.validation_fraction", data.validation_fraction, "in [0, 1)")
    _check(data.validation_size >= 0, "data.validation_size", data.validation_size, "must be >= 0")
    _check(data.random_crop_padding >= 0, "data.random_crop_padding", data.random_crop_padding, "must be >= 0")
    _check(data.random_translate >= 0, "data.random_translate", data.random_translate, "must be >= 0")
    _check(data.test_time_shift >= 0, "data.test_time_shift", data.test_time_shift, "must be >= 0")
    smoothing = train.label_smoothing
    _check(0.0 <= smoothing < 1.0, "train.label_smoothing", smoothing, "must be in [0, 1)")
    _check(
        not smoothing or train.loss == "cross_entropy", "train.label_smoothing", smoothing,
        f"smooths cross_entropy targets only; set it to 0 for train.loss={train.loss!r}",
    )  # fmt: skip
    _check(data.image_size >= 0, "data.image_size", data.image_size, "must be >= 0 (0: keep each image's size)")
    _check(data.channels in (0, 1, 3), "data.channels", data.channels, "0 (as decoded), 1 (grayscale) or 3 (RGB)")
    _check(0.0 < data.test_fraction < 1.0, "data.test_fraction", data.test_fraction, "must be in (0, 1)")
    for key in ("image_size", "channels"):
        _check(not data[key] or data.name == "image_folder", f"data.{key}", data[key],
               f"applies to data.name='image_folder' only (data.name is {data.name!r}); leave it 0")  # fmt: skip
    _check(data.zca_epsilon > 0, "data.zca_epsilon", data.zca_epsilon, "must be > 0")
    _check(train.num_epochs >= 1, "train.num_epochs", train.num_epochs, "must be >= 1")
    _check(train.cpu_devices >= 0, "train.cpu_devices", train.cpu_devices, "must be >= 0 (0: JAX's default)")
    _check(train.eval_every >= 1, "train.eval_every", train.eval_every, "must be >= 1")
    _check(train.log_every >= 1, "train.log_every", train.log_every, "must be >= 1")
    _check(train.checkpoint_every >= 0, "train.checkpoint_every", train.checkpoint_every, "must be >= 0")
    _check(train.keep_checkpoints >= 1, "train.keep_checkpoints", train.keep_checkpoints, "must be >= 1")
    for key in ("mixup_alpha", "cutmix_alpha"):
        _check(data[key] >= 0, f"data.{key}", data[key], "must be >= 0 (0: off)")
        _check(not data[key] or train.loss == "cross_entropy", f"data.{key}", data[key],
               f"mixes cross_entropy targets only; set it to 0 for train.loss={train.loss!r}")  # fmt: skip
    if data.randaugment:
        parse_randaugment(data.randaugment)
    _check(not (data.randaugment and data.trivialaugment), "data.trivialaugment", data.trivialaugment,
           f"choose RandAugment (data.randaugment={data.randaugment!r}) or TrivialAugment, not both")  # fmt: skip
    _check(data.color_jitter >= 0, "data.color_jitter", data.color_jitter, "must be >= 0 (0: off)")
    photometric = data.randaugment or data.trivialaugment or data.color_jitter
    _check(not (photometric and data.zca), "data.zca", data.zca,
           "cannot be combined with colour jitter, RandAugment or TrivialAugment (they need per-channel scaling)")  # fmt: skip
    low, high = data.random_scale
    _check(0 < low <= high, "data.random_scale", data.random_scale, "must be (low, high) with 0 < low <= high")
    _check(0.0 <= data.random_erasing <= 1.0, "data.random_erasing", data.random_erasing, "a probability in [0, 1]")
    low, high = data.random_erasing_area
    _check(0 < low <= high <= 1, "data.random_erasing_area", data.random_erasing_area,
           "must be (low, high) with 0 < low <= high <= 1")  # fmt: skip
    for key in ("mix_prob", "mix_switch_prob"):
        _check(0.0 <= data[key] <= 1.0, f"data.{key}", data[key], "must be a probability in [0, 1]")
    _check(0.0 <= train.ema_decay < 1.0, "train.ema_decay", train.ema_decay, "must be in [0, 1) (0: off)")
    accumulation = train.grad_accum_steps
    _check(accumulation >= 1 and data.batch_size % accumulation == 0, "train.grad_accum_steps", accumulation,
           f"must be >= 1 and divide data.batch_size={data.batch_size}")  # fmt: skip
    metrics.logger_names(train.loggers)
    _check(train.max_steps >= 0, "train.max_steps", train.max_steps, "must be >= 0 (0: no step budget)")
    _check(train.max_time >= 0, "train.max_time", train.max_time, "must be >= 0 minutes (0: no time budget)")
    _check(train.limit_batches >= 0, "train.limit_batches", train.limit_batches, "must be >= 0 (0: every batch)")
    patience = train.early_stopping_patience
    _check(patience >= 0, "train.early_stopping_patience", patience, "must be >= 0")
    _check(train.early_stopping_metric in ("val_accuracy", "val_loss"), "train.early_stopping_metric",
           train.early_stopping_metric, "must be 'val_accuracy' or 'val_loss'")  # fmt: skip
    for key in ("early_stopping_min_delta", "stop_train_loss", "stop_grad_norm"):
        _check(train[key] >= 0, f"train.{key}", train[key], "must be >= 0 (0: off)")
    try:
        re.compile(train.freeze)
    except re.error as error:
        _check(False, "train.freeze", train.freeze, f"is not a regular expression ({error})")
    names = models.list_models()
    _check(config.model.name in names, "model.name", config.model.name, f"one of {', '.join(names)}")
