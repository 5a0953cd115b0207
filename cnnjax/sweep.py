"""Hyperparameter sweeps: definitions, trial directories, the results table and plots, and the executors.

A sweep is a list of points, each a dict of dotted config keys to values, built with :func:`grid`, :func:`zipped`,
:func:`product` and :func:`random` (with :func:`uniform`, :func:`log_uniform`, :func:`choice`). Experiments define
theirs next to their config in ``sweeps()``. Each trial runs in ``<sweep_dir>/<trial name>/``, a complete run
directory; the sweep writes ``results.csv`` / ``results.md`` sorted by validation accuracy, a heatmap of validation
accuracy over two swept axes and the learning curves of all trials. Re-running a sweep skips finished trials and
resumes interrupted ones from their checkpoints; a failing or diverging trial is recorded and the sweep goes on.

Executors: ``sequential`` (one trial after another, compiled steps shared between trials whose shapes agree) and
``vectorized`` (trials of one ``train.seed`` that differ only in ``optim.INJECTED`` values train together as one
vmapped program, see :func:`train_group`). ``cnnjax.study`` spreads trials over processes and machines with Optuna.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import functools
import io
import itertools
import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnnjax import backend, data, metrics, optim, plots, preemption, run_card, rundir, train
from cnnjax import config as config_lib
from cnnjax import functional as F
from cnnjax.checkpoint import Checkpoints

Point = dict  # dotted config key -> value

# ----------------------------------------------------------------------------------------------------------------------
# Definitions
# ----------------------------------------------------------------------------------------------------------------------


def grid(**axes: Sequence) -> list[Point]:
    """Every combination of the values of ``axes`` (keys: dotted config keys, e.g. ``model__filters`` or passed as
    ``**{'model.filters': [...]}``)."""
    keys = [k.replace("__", ".") for k in axes]
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def zipped(**axes: Sequence) -> list[Point]:
    """The i-th values of every axis together; all axes must have the same length."""
    lengths = {len(v) for v in axes.values()}
    if len(lengths) > 1:
        raise ValueError(
            f"zipped: all axes need the same number of values, got {dict((k, len(v)) for k, v in axes.items())}"
        )
    keys = [k.replace("__", ".") for k in axes]
    return [dict(zip(keys, values)) for values in zip(*axes.values())]


def product(*sweeps: list[Point]) -> list[Point]:
    """Every combination of one point from each sweep, merged."""
    return [{k: v for point in points for k, v in point.items()} for points in itertools.product(*sweeps)]


@dataclasses.dataclass(frozen=True)
class Distribution:
    """A random axis: ``sample(rng)`` draws a value; ``kind`` and ``args`` describe it (for Optuna too)."""

    kind: str  # uniform | log_uniform | choice
    args: tuple

    def sample(self, rng: np.random.Generator):
        if self.kind == "uniform":
            return float(rng.uniform(*self.args))
        if self.kind == "log_uniform":
            low, high = self.args
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        return self.args[int(rng.integers(len(self.args)))]


def uniform(low: float, high: float) -> Distribution:
    return Distribution("uniform", (low, high))


def log_uniform(low: float, high: float) -> Distribution:
    if not 0 < low < high:
        raise ValueError(f"log_uniform needs 0 < low < high, got ({low}, {high})")
    return Distribution("log_uniform", (low, high))


def choice(values: Sequence) -> Distribution:
    return Distribution("choice", tuple(values))


def random(num: int, *, seed: int, **axes: Distribution) -> list[Point]:
    """``num`` points drawn from the distributions of ``axes``, the same for the same ``seed``."""
    rng = np.random.default_rng(seed)
    keys = [k.replace("__", ".") for k in axes]
    return [{k: d.sample(rng) for k, d in zip(keys, axes.values())} for _ in range(num)]


# ----------------------------------------------------------------------------------------------------------------------
# Trials
# ----------------------------------------------------------------------------------------------------------------------


def trial_config(base, point: Point):
    """A copy of ``base`` with the point's values set; an unknown key names the closest known keys."""
    config = copy.deepcopy(base)
    known = set(config_lib.flat_keys(config))
    for key, value in point.items():
        if key not in known:
            raise ValueError(
                f"sweep key {key!r} is not a config key; closest: {', '.join(config_lib.closest_keys(key, config))}"
            )
        section, name = key.rsplit(".", 1)
        target = config
        for part in section.split("."):
            target = target[part]
        target[name] = tuple(value) if isinstance(value, list) else value
    return config


def trial_name(index: int, point: Point) -> str:
    """A readable, filesystem-safe directory name: ``trial_007_filters=16-32_kernel_size=3``."""
    parts = [
        f"{k.split('.')[-1]}={'-'.join(map(str, v)) if isinstance(v, (tuple, list)) else v}" for k, v in point.items()
    ]
    return re.sub(r"[^A-Za-z0-9_.=-]", "", f"trial_{index:03d}_" + "_".join(parts))[:120]


def trial_dirs(sweep_dir: Path, points: list[Point]) -> list[Path]:
    return [Path(sweep_dir) / trial_name(i, p) for i, p in enumerate(points)]


def read_status(trial_dir: Path) -> dict:
    path = trial_dir / "results.json"
    return json.loads(path.read_text()) if path.exists() else {"status": "pending"}


def run_trial(config, trial_dir: Path) -> dict:
    """One trial: its results, or its failure recorded (``status`` diverged / failed with the error) without raising.
    An interruption (``preemption.Interrupted``) and a failed write (``rundir.WriteFailed``: a full disk) stop the
    sweep: they raise."""
    try:
        return train.train_and_evaluate(config, trial_dir)
    except train.TrainingDiverged as error:
        return {"status": "diverged", "error": str(error)}
    except (preemption.Interrupted, rundir.WriteFailed):
        raise
    except Exception as error:  # noqa: BLE001 - any failure of one trial is recorded; the sweep goes on
        metrics.log_line(f"trial {trial_dir.name} failed: {type(error).__name__}: {error}")
        return {"status": "failed", "error": f"{type(error).__name__}: {error}"}


# ----------------------------------------------------------------------------------------------------------------------
# The vectorized executor
# ----------------------------------------------------------------------------------------------------------------------

VECTORIZED_KEYS = tuple(f"optim.{k}" for k in optim.INJECTED)


def group_key(config) -> str:
    """Trials with equal keys differ only in ``VECTORIZED_KEYS`` and can train as one vmapped program. The seed is
    part of the key: the members of a group share their batches and augmentation (see :func:`_group_steps`), which
    is faster than members with batches of their own."""
    flat = json.loads(json.dumps(config.to_dict()))
    for key in VECTORIZED_KEYS:
        section, name = key.split(".")
        flat[section].pop(name)
    return json.dumps(flat, sort_keys=True)


def _stack(trees):
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def _member(tree, k: int):
    return jax.tree_util.tree_map(lambda leaf: leaf[k], tree)


def train_group(configs: list, workdirs: list[Path]) -> list[dict]:
    """Trains K configs that differ only in ``VECTORIZED_KEYS`` together: their states are stacked and one jitted
    ``vmap`` of the training step advances all of them (learning rates etc. are values in the stacked optimizer
    states, so no value triggers a recompile). Each member sees exactly the batches, keys and updates of its solo
    run, so its results equal the solo run's to float rounding (vmap may reorder reductions: not bitwise). A member
    whose loss becomes non-finite is frozen and recorded as diverged; the others go on. Early stopping freezes a
    member's best parameters (used for its test) while the group finishes. Writes each member's run directory
    (config.json, inference.json, metrics.jsonl, results.json with the test metrics, learning curves, periodic
    checkpoints at each epoch's end and the tested parameters as its best checkpoint). An interrupted group resumes
    from the newest step every member has a readable checkpoint of; SIGTERM/SIGINT checkpoint every member and raise
    ``preemption.Interrupted``.
    """
    base = configs[0]
    if len({group_key(config) for config in configs}) > 1:
        raise ValueError(f"train_group: the configs must differ only in {VECTORIZED_KEYS}; group them with group_key")
    model = train.check_config(base)
    with contextlib.ExitStack() as locks:
        for workdir in workdirs:
            locks.enter_context(rundir.exclusive(rundir.prepare(workdir)))
        with preemption.handling():
            return _train_group(configs, workdirs, model)


def _restore_group(checkpoints: list[Checkpoints], like: list[dict]):
    """(step, states, metas) of the newest step at which every member has a readable checkpoint, or None."""
    at_most = None
    while True:
        restored = [cp.restore_latest(state, at_most) for cp, state in zip(checkpoints, like)]
        if any(r is None for r in restored):
            return None
        steps = {r[0] for r in restored}
        if len(steps) == 1:
            return steps.pop(), [r[1] for r in restored], [r[2] for r in restored]
        at_most = min(steps)


def _train_group(configs: list, workdirs: list[Path], model) -> list[dict]:
    base, k = configs[0], len(configs)
    started = time.time()
    splits = data.load_splits(base.data)
    train.check_against_data(model, base.data, splits)
    images, labels = jax.device_put(splits.train)
    val_images, val_labels = jax.device_put(splits.validation)
    test_images, test_labels = jax.device_put(splits.test)
    batch_size, c = base.data.batch_size, base.train
    steps_per_epoch = train.epoch_steps(base, len(splits.train[1]))
    optimizer, train_fn, _, eval_fn, _ = train.compiled_steps(base, model, steps_per_epoch, splits.preprocessing)
    states, (key, *_) = zip(*(train.run_state(config, model, optimizer, splits.image_shape) for config in configs))
    checkpoints = [Checkpoints(workdir / "checkpoints", c.keep_checkpoints) for workdir in workdirs]
    restored = _restore_group(checkpoints, states)
    if restored is None:
        step, metas, best_params = (
            0,
            [{**train.initial_meta(), "alive": True, "train_time_s": 0.0} for _ in configs],
            None,
        )
    else:
        step, states, metas = restored
        best = [cp.restore_best(s) for cp, s in zip(checkpoints, states)]
        best_params = _stack([train.evaluated(b[0] if b is not None else s)["params"] for b, s in zip(best, states)])
        metrics.log_line(f"resuming the group of {k} from step {step}")
    state = _stack(states)
    if best_params is None:
        best_params = jax.tree_util.tree_map(jnp.copy, train.evaluated(state)["params"])  # state is donated
    group_step, group_eval = _group_steps(train_fn, eval_fn, backend.XlaOptions.of(c))
    writers = []
    for config, workdir in zip(configs, workdirs):
        metrics.write_json(workdir / "config.json", config.to_dict())
        run_card.write_or_check(workdir, config, splits)
        metrics.write_json(workdir / "results.json", {"status": "running", "executor": "vectorized"})
        writers.append(metrics.MetricsWriter(workdir, step, c.loggers))
    alive = jnp.array([meta["alive"] for meta in metas])
    has_validation = len(val_labels) > 0
    train_time = metas[0]["train_time_s"]

    def save_all(step: int, improved=None) -> None:
        alive_host = np.asarray(alive)
        for m in range(k):
            metas[m].update(alive=bool(alive_host[m]), train_time_s=train_time)
            if improved is not None and improved[m]:  # first: the periodic checkpoint is then its copy
                checkpoints[m].save_best(step, _member(state, m), metas[m])
            checkpoints[m].save(step, _member(state, m), metas[m])

    budget, stopped = train.Budget.of(c, workdirs[0]), None
    plateau_steps = jax.jit(jax.vmap(functools.partial(optim.plateau_update, base.optim)))
    evaluations = functools.partial(_group_evaluations, group_eval, batch_size=base.data.eval_batch_size,
                                    limit=c.limit_batches)  # fmt: skip
    preemption.start_polling()
    for epoch in range(step // steps_per_epoch, c.num_epochs):
        if not any(meta["alive"] and not meta["stopped_early"] and not meta.get("converged") for meta in metas):
            break
        if stopped := budget.spent(step, check_time=False):
            break
        epoch_start = time.time()
        batches = data.train_batches(len(splits.train[1]), batch_size, seed=c.seed, epoch=epoch)  # (steps, batch)
        offset = step - epoch * steps_per_epoch
        if offset == 0:
            state["epoch_sums"] = jnp.zeros((k, 3), jnp.float32)
        for i in range(offset, steps_per_epoch):
            state, step_metrics, alive = group_step(state, images, labels, jnp.asarray(batches[i]), key, alive)
            step += 1
            if stopped := budget.spent(step, check_time=step % c.log_every == 0 or i == steps_per_epoch - 1):
                break
            if i < steps_per_epoch - 1 and (signum := preemption.requested(step)):
                train_time += time.time() - epoch_start
                save_all(step)
                _interrupt_group(workdirs, writers, checkpoints, step, signum)
        sums = np.asarray(state["epoch_sums"], np.float64)
        elapsed = time.time() - epoch_start  # training only, as in a solo run's epoch record
        view = train.evaluated(state)  # the moving average's weights with train.ema_decay
        val = evaluations(view, val_images, val_labels)
        if "plateau" in state and has_validation:
            state["plateau"] = plateau_steps(state["plateau"], jnp.asarray([v.loss for v in val], jnp.float32))
        train_time += elapsed
        alive_host, learning_rates = np.asarray(alive), np.asarray(step_metrics["learning_rate"])
        running = [alive_host[m] and not metas[m]["stopped_early"] and not metas[m].get("converged")
                   for m in range(k)]  # fmt: skip
        improved = np.array([running[m] and has_validation and train.update_best(metas[m], epoch + 1, val[m], c)
                             for m in range(k)])  # fmt: skip
        for m in np.flatnonzero(running):  # a converged member keeps its best; the group trains on
            train.converged(c, metas[m], epoch + 1, step, sums[m][0] / sums[m][2])
        best_params = _where_members(improved, view["params"], best_params)
        for m in np.flatnonzero(improved):
            metas[m]["best_step"] = step
        for m in range(k):
            if alive_host[m]:
                writers[m].write(train.make_epoch_record(
                    step, epoch + 1, sums[m], learning_rates[m], elapsed,
                    k * (step - epoch * steps_per_epoch - offset) * batch_size / elapsed,
                    val[m] if has_validation else None,
                ))  # fmt: skip
        metrics.log_line(
            f"epoch {epoch + 1:>3}/{c.num_epochs}  group of {k}: val acc "
            + " ".join("diverged" if not a else f"{100 * v.accuracy:.2f}%" for a, v in zip(alive_host, val))
            + f"  {elapsed:.1f} s"
        )
        save_all(step, improved)
        if stopped:
            metrics.log_line(f"stopped the group at step {step}: the budget {stopped} is spent")
            break
        if (signum := preemption.requested(step)) and epoch + 1 < c.num_epochs:
            _interrupt_group(workdirs, writers, checkpoints, step, signum)
    if not has_validation:
        best_params = train.evaluated(state)["params"]
    epochs = step // steps_per_epoch
    tested = _with_params(state, best_params)
    test = evaluations(train.evaluated(tested), test_images, test_labels)
    alive_host = np.asarray(alive)
    results = []
    for m, (config, workdir, writer) in enumerate(zip(configs, workdirs, writers)):
        if alive_host[m]:  # the tested parameters as the member's best checkpoint: cnnjax.load uses them
            tested_step = (
                metas[m].get("best_step", metas[m]["best_epoch"] * steps_per_epoch) if has_validation else step
            )
            checkpoints[m].save_best(tested_step, _member(tested, m), metas[m])
            writer.write({"kind": "test", "step": step, "test_loss": test[m].loss,
                          "test_accuracy": test[m].accuracy, "test_top5_accuracy": test[m].top5_accuracy})  # fmt: skip
            title = f"{config.model.name} (vectorized): test accuracy {100 * test[m].accuracy:.2f}%"
            writer.figure("test/confusion_matrix", plots.confusion_figure(test[m].confusion, splits.class_names,
                                                                          title), step)  # fmt: skip
        checkpoints[m].close()
        records = metrics.read_records(workdir / "metrics.jsonl")
        if records:
            curves = plots.learning_curves(
                records, workdir / "learning_curves.png", f"{config.model.name} (vectorized)"
            )
            writer.figure("learning_curves", curves, step)
        common = {"executor": "vectorized", "group_size": k, "budget": stopped, "stopped": train.stop_reason(metas[m], stopped),
                  "convergence": metas[m].get("converged")}  # fmt: skip
        if alive_host[m]:
            result = train.run_results(
                test[m], splits.class_names, metas[m] if has_validation else None, epochs=epochs,
                params=train.count_params(_member(best_params, m)), train_time_s=train_time / k,
                wall_time_s=(time.time() - started) / k, **common,
            )  # fmt: skip
        else:
            error = "training diverged: the loss became non-finite; this member was frozen (vectorized)"
            best_epoch = metas[m]["best_epoch"]
            result = {"status": "diverged", "test_accuracy": None, "test_loss": None, "best_epoch": best_epoch,
                      "val_accuracy": metas[m]["best_val_accuracy"] if best_epoch else None, "epochs": epochs,
                      "params": train.count_params(_member(best_params, m)), "error": error, **common}  # fmt: skip
        writer.hyperparameters(config.to_dict(), {key: result[key] for key in ("test_accuracy", "test_loss",
                                                  "val_accuracy") if result.get(key) is not None})  # fmt: skip
        writer.close()
        metrics.write_json(workdir / "results.json", result)
        results.append(result)
    return results


def _interrupt_group(workdirs: list[Path], writers, checkpoints: list[Checkpoints], step: int, signum: int) -> None:
    """Every member checkpointed at ``step`` (by the caller) is marked interrupted; raises preemption.Interrupted."""
    name = preemption.signal_name(signum)
    message = f"interrupted by {name} at step {step} (vectorized group); run the same command again to resume"
    for workdir, writer, cp in zip(workdirs, writers, checkpoints):
        writer.close()
        cp.close()
        metrics.write_json(
            workdir / "results.json", {"status": "interrupted", "step": step, "signal": name, "error": message}
        )
    raise preemption.Interrupted(message, signum)


def _with_params(state: dict, params) -> dict:
    """``state`` whose evaluated parameters (see ``train.evaluated``) are ``params``."""
    if "ema" in state:
        return {**state, "ema": {**state["ema"], "params": params}}
    if "slow" in state:
        return {**state, "slow": params}
    return {**state, "params": params}


def _where_members(mask: np.ndarray, new, old):
    """Per member k of stacked trees: ``new`` where ``mask[k]``, else ``old``."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


@functools.lru_cache(maxsize=8)
def _group_steps(train_fn, eval_fn, xla: backend.XlaOptions, axis_name: str | None = F.MEMBER_AXIS):
    """jit(vmap) of the training step (with divergence masking) and of the evaluation step over the member axis.

    The members share the batch index and key (one seed): the batch and its augmentation are computed once for all
    members, and the first convolution sees one input, so JAX's batching turns the members' stacked kernels into
    one convolution with their output channels side by side. Mapped over ``functional.MEMBER_AXIS``, the later
    convolutions run one per member on the CPU (see ``functional.conv2d``); ``axis_name=None`` leaves them to JAX's
    batching (one grouped convolution; bench/sweep_vectorized.py compares both).
    ``xla``: the config's ``backend.XlaOptions``.
    """
    options = xla.compiler_options()

    def masked_step(state, images, labels, batch_index, key, alive):
        new_state, step_metrics = train_fn(state, images, labels, batch_index, key)
        ok = alive & jnp.isfinite(step_metrics["loss"]) & jnp.isfinite(step_metrics["grad_norm"])
        new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(ok, new, old), new_state, state)
        return new_state, step_metrics, ok

    group_step = jax.jit(
        jax.vmap(masked_step, in_axes=(0, None, None, None, None, 0), axis_name=axis_name),
        donate_argnums=0,
        compiler_options=options,
    )
    group_eval = jax.jit(
        jax.vmap(eval_fn, in_axes=(0, 0, None, None, None, None), axis_name=axis_name), compiler_options=options
    )
    return group_step, group_eval


def _group_evaluations(group_eval, state, images, labels, batch_size: int, limit: int = 0) -> list:
    """Every member's ``train.Evaluation`` of a split (NaN metrics where the split is empty); ``limit`` > 0: only
    its first batches (``train.limit_batches``)."""
    if len(labels) == 0:
        return [train.Evaluation(np.nan, np.nan, np.nan, None)] * state["step"].shape[0]
    totals = train.summed_over_batches(group_eval, state, images, labels, batch_size, limit=limit)
    members = range(state["step"].shape[0])
    return [train.evaluation_of(jax.tree_util.tree_map(lambda t, k=k: t[k], totals)) for k in members]


# ----------------------------------------------------------------------------------------------------------------------
# Running a sweep, the results table and plots
# ----------------------------------------------------------------------------------------------------------------------

EXECUTORS = ("auto", "sequential", "vectorized")
# the largest batch at which a vectorized group of LeNets beats sequential trials on a 2-core CPU; on accelerators
# it wins at every batch (docs/performance.md, bench/sweep_vectorized.py)
CPU_VECTORIZED_MAX_BATCH = 32


def vectorizes(executor: str, batch_size: int, backend: str | None = None) -> bool:
    """Whether ``executor`` trains a group of compatible trials as one vmapped program: 'vectorized' always,
    'sequential' never, 'auto' where that measured faster (accelerators; the CPU up to
    ``CPU_VECTORIZED_MAX_BATCH``). ``backend``: 'cpu', 'gpu', 'tpu' (None: JAX's default backend)."""
    if executor != "auto":
        return executor == "vectorized"
    return (backend or jax.default_backend()) != "cpu" or batch_size <= CPU_VECTORIZED_MAX_BATCH


def run_sweep(base, points: list[Point], sweep_dir: Path, *, executor: str = "auto",
              only: int | None = None, max_group: int = 8) -> list[dict]:  # fmt: skip
    """Runs (or resumes) the trials of ``points`` under ``sweep_dir`` and writes the table and plots.

    ``executor``: one of :data:`EXECUTORS` (see :func:`vectorizes`). ``only``: run just that trial index (for spreading
    trials by hand). ``max_group``: vectorized group size limit. Returns the table rows.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown sweep executor {executor!r}; choose one of {EXECUTORS}")
    configs = [trial_config(base, p) for p in points]  # every key checked before anything runs
    for config in configs:
        train.check_config(config)
    sweep_dir = rundir.prepare(sweep_dir)
    dirs = trial_dirs(sweep_dir, points)
    with rundir.exclusive(sweep_dir), preemption.handling():
        try:
            _run_trials(configs, dirs, executor, only, max_group, sweep_dir)
        finally:  # also when interrupted: the table shows what is done, running and interrupted
            rows = write_report(sweep_dir, points, dirs)
    return rows


RERUN = ("pending", "running", "interrupted", "failed")


def _run_trials(configs: list, dirs: list[Path], executor: str, only: int | None, max_group: int, sweep_dir: Path):
    """Runs the trials (all, or just ``only``) whose status is one of RERUN, grouped as the executor says."""
    selected = range(len(configs)) if only is None else [only]
    # finished and diverged trials stand (training is deterministic); the others run or resume
    todo = [i for i in selected if read_status(dirs[i])["status"] in RERUN]
    metrics.log_line(f"sweep of {len(configs)} trials in {sweep_dir}: {len(todo)} to run ({executor})")
    groups: dict[str, list[int]] = {}  # trials that run alone are groups of one, in trial order
    for i in todo:
        # train.stop_grad_norm watches each step's gradient norm, which a group logs only at its epochs' ends
        vectorized = vectorizes(executor, configs[i].data.batch_size) and not configs[i].train.stop_grad_norm
        key = group_key(configs[i]) if vectorized else str(i)
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        for start in range(0, len(members), max_group):
            chunk = members[start : start + max_group]
            if signum := preemption.received():  # a signal between trials: stop before the next one
                message = f"sweep interrupted by {preemption.signal_name(signum)}; run it again to go on"
                raise preemption.Interrupted(message, signum)
            if len(chunk) == 1:
                run_trial(configs[chunk[0]], dirs[chunk[0]])
                continue
            try:
                train_group([configs[i] for i in chunk], [dirs[i] for i in chunk])
            except (preemption.Interrupted, rundir.WriteFailed):
                raise
            except Exception as error:  # noqa: BLE001 - the group's trials are recorded as failed
                for i in chunk:
                    metrics.write_json(
                        dirs[i] / "results.json", {"status": "failed", "error": f"{type(error).__name__}: {error}"}
                    )


def write_report(sweep_dir: Path, points: list[Point], dirs: list[Path]) -> list[dict]:
    """results.csv / results.md sorted by validation accuracy, the heatmap and overlaid learning curves."""
    rows = []
    for point, trial_dir in zip(points, dirs):
        result = read_status(trial_dir)
        config_path = trial_dir / "config.json"
        flops = None
        if config_path.exists() and result.get("status") == "done":
            flops = _flops(trial_dir)
        rows.append({
            "trial": trial_dir.name,
            **{k: _format(v) for k, v in point.items()},
            "val_accuracy": result.get("val_accuracy"), "test_accuracy": result.get("test_accuracy"),
            "params": result.get("params"), "flops": flops, "time_s": result.get("wall_time_s"),
            "status": result["status"], "error": result.get("error", ""),
        })  # fmt: skip
    rows.sort(key=lambda r: -(r["val_accuracy"] if r["val_accuracy"] is not None else -1.0))
    columns = list(rows[0]) if rows else []
    table_csv = io.StringIO(newline="")
    writer = csv.DictWriter(table_csv, columns)
    writer.writeheader()
    writer.writerows(rows)
    metrics.write_text(sweep_dir / "results.csv", table_csv.getvalue())
    table = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    table += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    metrics.write_text(sweep_dir / "results.md", "\n".join(table) + "\n")
    axes = list(points[0]) if points else []
    plots.sweep_heatmap(rows, axes, sweep_dir / "heatmap.png")
    plots.overlaid_learning_curves(
        {d.name: metrics.read_records(d / "metrics.jsonl") for d in dirs}, sweep_dir / "learning_curves.png"
    )
    return rows


def _flops(trial_dir: Path) -> int | None:
    """Forward FLOPs per image of the trial's model (from cnnjax.summary)."""
    from cnnjax import models, summary

    saved = json.loads((trial_dir / "config.json").read_text())
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in saved["model"].items() if k != "name"}
    shape = train.expected_image_shape(ml_collections.ConfigDict(saved["data"]))
    if shape is None:
        return None
    return sum(r["flops"] for r in summary.summarize(models.get(saved["model"]["name"], **fields), shape))


def _format(value):
    return "-".join(map(str, value)) if isinstance(value, (tuple, list)) else value


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value).replace("|", "/")[:80]


def best_command(experiment: str, point: Point, extra: Sequence[str] = ()) -> str:
    """The launch command that reruns one trial on its own."""
    overrides = " ".join(
        f"--config.{k}='{v}'" if isinstance(v, (tuple, list)) else f"--config.{k}={v}" for k, v in point.items()
    )
    return " ".join(["python launch.py", f"--experiment={experiment}", overrides, *extra]).strip()
