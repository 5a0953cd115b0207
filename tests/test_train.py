"""Training loop, resume, divergence, early stopping, evaluation and the launcher, on small generated data."""

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import data, metrics, models, optim, train
from cnnjax.config import base_config
from tests.fakes import comparable, final_state, on_training_step, small_config

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


@pytest.mark.parametrize("experiment", ["lenet", "lenet5_classic", "cifar_cnn", "mnist_cnn", "resnet"])
def test_smoke_run_of_each_experiment_learns(tmp_path, experiment):
    config = small_config(tmp_path, experiment)
    config.train.num_epochs = 4
    config.train.cpu_devices = 0  # this process has started JAX with one device (test_parallel splits the CPU)
    if experiment == "cifar_cnn":
        config.optim.learning_rate = 1e-3
    if experiment == "resnet":  # its XLA:CPU settings (YNNPACK's elementwise fusion, no CSE) on a ResNet-8
        config.model.depth = 8
    results = train.train_and_evaluate(config, tmp_path / "run")
    records = metrics.read_records(tmp_path / "run" / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert results["status"] == "done" and len(epochs) == 4
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert 0.0 <= results["test_accuracy"] <= 1.0 and results["params"] > 0
    for name in ("config.json", "results.json", "learning_curves.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    assert any(p.name.startswith("events") for p in (tmp_path / "run" / "tensorboard").iterdir())
    step_records = [r for r in records if r["kind"] == "train"]
    assert {"loss", "accuracy", "learning_rate", "grad_norm", "param_norm", "images_per_sec"} <= set(step_records[0])


def test_logged_images_per_sec_times_finished_steps(tmp_path, monkeypatch):
    """Steps are dispatched asynchronously; each logging interval's images/s must count the time its steps took to
    finish, so the intervals of an epoch add up to the epoch's time, not to the time it took to dispatch them."""
    config = small_config(tmp_path, num_epochs=1, log_every=1)
    real_steps = train.compiled_steps
    matrix = jnp.full((700, 700), 1e-3)
    slow = jax.jit(lambda m, a: jax.tree.map(lambda v: v + 0.0 * jnp.sum(a @ a @ a @ a), m))  # ~10 ms of work

    def slow_steps(*args):
        optimizer, train_fn, step, eval_fn, eval_step = real_steps(*args)

        def slow_step(*step_args):
            state, step_metrics = step(*step_args)
            return state, slow(step_metrics, matrix)

        return optimizer, train_fn, slow_step, eval_fn, eval_step

    monkeypatch.setattr(train, "compiled_steps", slow_steps)
    train.train_and_evaluate(config, tmp_path / "run")
    records = metrics.read_records(tmp_path / "run" / "metrics.jsonl")
    (epoch,) = [r for r in records if r["kind"] == "epoch"]
    steps = [0] + [r["step"] for r in records if r["kind"] == "train"]
    rates = [r["images_per_sec"] for r in records if r["kind"] == "train"]
    interval_s = [(b - a) * config.data.batch_size / rate for a, b, rate in zip(steps, steps[1:], rates)]
    compiling, *trained = interval_s  # the first interval holds the compilation
    assert 0.6 * (epoch["elapsed_s"] - compiling) <= sum(trained) <= epoch["elapsed_s"] - compiling


def test_progress_bar_counts_finished_steps_at_each_logging_interval(tmp_path, monkeypatch):
    """The bar advances when an interval's steps have finished, not as they are dispatched (which runs ahead)."""
    updates = []

    class RecordingBar:
        def __init__(self, total, initial, description, enabled=True):
            self.total = total

        def update(self, n=1):
            updates.append(n)

        def set_postfix(self, values, refresh=True):
            pass

        def close(self):
            pass

    monkeypatch.setattr(metrics, "progress_bar", RecordingBar)
    config = small_config(tmp_path, num_epochs=2, log_every=4)  # 96 training images: 6 steps of 16 per epoch
    train.train_and_evaluate(config, tmp_path / "run")
    assert updates == [4, 2, 2, 4]  # steps 4 and 6 (the epoch's end), then 8 and 12


def test_lenet_reaches_high_accuracy_on_learnable_data(tmp_path):
    results = train.train_and_evaluate(small_config(tmp_path, num_epochs=6), tmp_path / "run")
    assert results["test_accuracy"] >= 0.9


def test_resume_after_interruption_is_bitwise_identical(tmp_path, monkeypatch):
    config = small_config(tmp_path, checkpoint_every=3)
    train.train_and_evaluate(config, tmp_path / "whole")

    def interrupt():  # between two checkpoints, in the second epoch
        raise KeyboardInterrupt

    on_training_step(monkeypatch, 11, interrupt)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(config, tmp_path / "resumed")
    assert json.loads((tmp_path / "resumed" / "results.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    results = train.train_and_evaluate(config, tmp_path / "resumed")

    whole = final_state(tmp_path / "whole")
    resumed = final_state(tmp_path / "resumed")
    assert whole[0] == resumed[0]
    jax.tree_util.tree_map(np.testing.assert_array_equal, whole[1], resumed[1])
    assert comparable(metrics.read_records(tmp_path / "whole" / "metrics.jsonl")) == comparable(
        metrics.read_records(tmp_path / "resumed" / "metrics.jsonl")
    )
    assert results["test_accuracy"] == json.loads((tmp_path / "whole" / "results.json").read_text())["test_accuracy"]
    epochs = [r for r in metrics.read_records(tmp_path / "resumed" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert results["train_time_s"] == pytest.approx(sum(r["elapsed_s"] for r in epochs))  # before the resume too
    # a finished run is not trained again
    assert train.train_and_evaluate(config, tmp_path / "resumed")["steps"] == results["steps"]


def test_kill_9_during_training_then_resume_matches_uninterrupted(tmp_path):
    config = small_config(tmp_path, checkpoint_every=2, num_epochs=8)
    config.data.batch_size = 8
    train.train_and_evaluate(config, tmp_path / "whole")
    overrides = [f"--config.{k}={v}" for k, v in (
        ("data.name", "mnist"), ("data.data_dir", config.data.data_dir), ("data.tfds_dir", config.data.tfds_dir),
        ("data.batch_size", 8), ("data.eval_batch_size", 7), ("data.validation_fraction", 0.2),
        ("train.num_epochs", 8), ("train.log_every", 2), ("train.checkpoint_every", 2),
    )]  # fmt: skip
    command = [sys.executable, str(ROOT / "launch.py"), "--experiment=lenet", f"--workdir={tmp_path / 'killed'}"]
    process = subprocess.Popen(command + overrides, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    periodic = tmp_path / "killed" / "checkpoints" / "periodic"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        periodic.exists() and len([p for p in periodic.iterdir() if p.name.isdigit()]) >= 3
    ):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert json.loads((tmp_path / "killed" / "results.json").read_text())["status"] == "running"
    finished = subprocess.run(command + overrides, cwd=ROOT, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "resuming from the checkpoint" in finished.stderr + finished.stdout
    whole, killed = final_state(tmp_path / "whole"), final_state(tmp_path / "killed")
    jax.tree_util.tree_map(np.testing.assert_array_equal, whole[1], killed[1])
    assert comparable(metrics.read_records(tmp_path / "whole" / "metrics.jsonl")) == comparable(
        metrics.read_records(tmp_path / "killed" / "metrics.jsonl")
    )


def test_divergence_stops_with_a_clear_message_and_status(tmp_path):
    config = small_config(tmp_path)
    config.optim.name = "sgd"
    config.optim.learning_rate = 1e12
    with pytest.raises(train.TrainingDiverged, match=r"training diverged: the loss is (nan|inf) at step \d+"):
        train.train_and_evaluate(config, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "diverged" and results["step"] <= config.train.log_every * 8


def test_early_stopping_keeps_the_best_checkpoint_for_the_test(tmp_path):
    config = small_config(tmp_path, num_epochs=6, early_stopping_patience=2)
    config.optim.learning_rate = 1e-12  # validation accuracy cannot improve after the first evaluation
    results = train.train_and_evaluate(config, tmp_path / "run")
    assert results["stopped_early"] and results["epochs"] == 3 and results["best_epoch"] == 1
    epochs = [r for r in metrics.read_records(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert results["val_accuracy"] == epochs[0]["val_accuracy"]


@pytest.mark.parametrize(
    "section,key,value,message",
    [
        ("optim", "learning_rate", -0.1, r"config.optim.learning_rate=-0.1 is invalid: must be > 0"),
        ("optim", "name", "adamax", r"config.optim.name='adamax' is invalid: choose one of sgd, momentum"),
        ("optim", "schedule", "linear", r"config.optim.schedule='linear' is invalid"),
        ("train", "loss", "hinge", r"config.train.loss='hinge' is invalid"),
        ("data", "batch_size", 0, r"config.data.batch_size=0 is invalid"),
        ("data", "test_time_shift", -1, r"config.data.test_time_shift=-1 is invalid: must be >= 0"),
        ("train", "label_smoothing", 1.0, r"config.train.label_smoothing=1.0 is invalid: must be in \[0, 1\)"),
        ("train", "cpu_devices", -1, r"config.train.cpu_devices=-1 is invalid: must be >= 0"),
        ("model", "kernel_size", 15, r"^Conv2D 'conv2': a 15x15 kernel .* 14x14 feature map.*larger input\.$"),
        ("model", "num_classes", 7, r"outputs 7 classes but the dataset has 10; set --config.model.num_classes=10"),
        ("data", "image_size", 32, r"config.data.image_size=32 is invalid: applies to data.name='image_folder' only"),
        ("data", "channels", 2, r"config.data.channels=2 is invalid: 0 \(as decoded\), 1 \(grayscale\) or 3"),
        ("data", "test_fraction", 1.0, r"config.data.test_fraction=1.0 is invalid: must be in \(0, 1\)"),
        ("train", "freeze", "conv[", r"config.train.freeze='conv\[' is invalid: is not a regular expression"),
    ],
)
def test_bad_config_values_are_rejected_before_loading_data(tmp_path, section, key, value, message):
    config = base_config()
    config.data.name = "mnist"
    config.data.data_dir = str(tmp_path / "does-not-exist")  # loading would fail with a DataError
    config[section][key] = value
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_label_smoothing_needs_the_cross_entropy_loss(tmp_path):
    config = base_config()
    config.train.loss, config.train.label_smoothing = "mse", 0.1
    with pytest.raises(ValueError, match=r"smooths cross_entropy targets only; set it to 0 for train.loss='mse'"):
        train.train_and_evaluate(config, tmp_path / "run")


def test_label_smoothing_changes_the_training_loss_only():
    model = models.get("lenet")
    optimizer = optim.make_optimizer(base_config().optim, steps_per_epoch=1, num_epochs=1)
    images = jnp.asarray(np.random.default_rng(0).standard_normal((8, 28, 28, 1)), jnp.float32)
    labels = jnp.arange(8, dtype=jnp.int32) % 10
    key = jax.random.key(0)
    state = train.init_state(model, optimizer, (28, 28, 1), key)
    plain = train.train_step_fn(model, optimizer, "cross_entropy", lambda k, x: x)
    smoothed = train.train_step_fn(model, optimizer, "cross_entropy", lambda k, x: x, label_smoothing=0.2)
    logits = model.apply({"params": state["params"]}, images)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, 10), 0.2)
    expected = jnp.mean(optax.softmax_cross_entropy(logits, targets))
    batch = (images, labels, jnp.arange(8), key)
    np.testing.assert_allclose(smoothed(state, *batch)[1]["loss"], expected, rtol=1e-5)
    assert abs(float(plain(state, *batch)[1]["loss"]) - float(expected)) > 1e-3


def test_test_time_views_average_the_outputs_of_the_mirrored_and_shifted_images():
    model = models.get("lenet")
    images = jnp.asarray(np.random.default_rng(0).standard_normal((6, 28, 28, 1)), jnp.float32)
    labels = jnp.arange(6, dtype=jnp.int32)
    variables = model.init(jax.random.key(0), images)
    views = functools.partial(data.test_time_views, flip=True, shift=1)
    eval_step = train.eval_step_fn(model, "cross_entropy", test_time_views=views)
    loss_sum, _, count = eval_step(variables["params"], {}, images, labels, jnp.arange(6), jnp.ones(6))["sums"][:3]
    outputs = np.mean([model.apply(variables, view) for view in views(images)], axis=0)
    expected = np.sum(optax.softmax_cross_entropy_with_integer_labels(outputs, labels))
    np.testing.assert_allclose(loss_sum, expected, rtol=1e-5)
    plain_sum = train.eval_step_fn(model, "cross_entropy")(variables["params"], {}, images, labels, jnp.arange(6),
                                                           jnp.ones(6))["sums"][0]  # fmt: skip
    assert count == 6 and abs(float(plain_sum) - float(expected)) > 1e-3


def test_initial_states_compile_once_per_model_and_depend_on_the_key():
    model = models.get("lenet", filters=(2, 3), hidden=(5,))
    optimizer = optim.make_optimizer(base_config().optim, 10, 1)
    first = train.init_state(model, optimizer, (12, 12, 1), jax.random.key(0))
    compiled = train.init_state._cache_size()
    second = train.init_state(model, optimizer, (12, 12, 1), jax.random.key(1))
    assert train.init_state._cache_size() == compiled  # a trial with another seed reuses the program
    kernel = first["params"]["conv1"]["kernel"]
    assert kernel.shape == (5, 5, 1, 2) and not np.array_equal(kernel, second["params"]["conv1"]["kernel"])
    again = train.init_state(model, optimizer, (12, 12, 1), jax.random.key(0))
    jax.tree_util.tree_map(np.testing.assert_array_equal, first, again)
    assert int(first["step"]) == 0 and first["opt_state"] is not None


# ----------------------------------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------------------------------


def launch(*args):
    return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "speedrun, base, changed",
    [
        (
            "speedrun_90",
            "lenet",
            {"optim.learning_rate", "data.test_time_shift", "train.num_epochs", "train.eval_every"},
        ),
        ("speedrun_94", "resnet9", {"train.num_epochs", "train.eval_every", "train.matmul_precision"}),
    ],
)
def test_speedruns_are_their_experiments_with_a_shorter_schedule(speedrun, base, changed):
    import importlib

    from cnnjax.config import flat_keys

    fast, slow = (importlib.import_module(f"experiments.{name}").get_config() for name in (speedrun, base))
    value = lambda config, key: functools.reduce(getattr, key.split("."), config)  # noqa: E731
    assert {key for key in flat_keys(fast) if value(fast, key) != value(slow, key)} == changed
    assert fast.train.eval_every == fast.train.num_epochs < slow.train.num_epochs  # one validation, at the end
    train.check_config(fast)


def test_launcher_overrides_summary_and_errors():
    result = launch("--experiment=lenet", "--summary", "--config.model.filters=(8, 32)", "--config.model.kernel_size=3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "conv2   Conv2D     12x12x32" in result.stdout
    result = launch("--experiment=lenet5_classic", "--summary")
    assert "60,840 parameters: 60,000 trainable, 840 fixed" in result.stdout
    result = launch("--experiment=lenet", "--config.optim.lr=0.1")
    assert (
        result.returncode != 0 and "unknown config key 'optim.lr'; closest keys: optim.learning_rate" in result.stderr
    )
    result = launch("--experiment=lenett")
    assert result.returncode != 0 and "unknown experiment 'lenett'; available: alexnet, cifar_cnn" in result.stderr
    assert "lenet, lenet5_classic" in result.stderr
    result = launch("--experiment=lenet", "--config.optim.learning_rate=fast", "--summary")
    assert result.returncode != 0 and "learning_rate" in result.stderr
    result = launch("--experiment=lenet", "--workdir=README.md")  # a file: one line, nothing started
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --workdir=README.md is a file, not a directory; name a directory (created if missing)"
    )
    result = launch("--help")  # no experiment needed to read the flags (absl's help exits with status 1)
    assert "--experiment: the experiment to run" in result.stdout and "lenet, lenet5_classic" in result.stdout


def test_budgets_stop_cleanly_and_a_larger_budget_resumes_to_the_same_state(tmp_path):
    config = small_config(tmp_path)  # 6 steps per epoch, 3 epochs
    train.train_and_evaluate(config, tmp_path / "whole")
    config.train.max_steps = 9
    results = train.train_and_evaluate(config, tmp_path / "budget")
    assert results["status"] == "done" and results["stopped"] == "budget" and results["budget"] == "train.max_steps=9"
    assert results["steps"] == 9 and results["test_accuracy"] is not None
    epochs = [r for r in metrics.read_records(tmp_path / "budget" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["step"] for r in epochs] == [6, 9] and "val_accuracy" in epochs[-1]  # validated where it stopped
    config.train.max_steps = 18  # the schedule does not depend on the budget: the same run, resumed at step 9
    results = train.train_and_evaluate(config, tmp_path / "budget")
    assert results["steps"] == 18 and results["stopped"] == "budget"
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, final_state(tmp_path / "whole")[1], final_state(tmp_path / "budget")[1]
    )
    config.train.max_steps, config.train.max_time = 0, 1e-6  # minutes: spent at the first look at the clock
    results = train.train_and_evaluate(config, tmp_path / "time")
    assert results["budget"] == "train.max_time=1e-06" and results["steps"] == config.train.log_every
    config.train.max_time, config.train.limit_batches = 0.0, 2  # a smoke run: 2 batches per epoch
    results = train.train_and_evaluate(config, tmp_path / "smoke")
    assert results["steps"] == 6 and results["stopped"] == "num_epochs"


def test_dry_run_takes_one_step_on_the_real_shapes_and_writes_nothing(tmp_path):
    config = small_config(tmp_path)
    result = train.dry_run(config)
    assert result["image_shape"] == [28, 28, 1] and result["steps_per_epoch"] == 6
    assert np.isfinite(result["train_loss"]) and np.isfinite(result["eval_loss"])
    assert not (tmp_path / "runs").exists()


def test_a_vectorized_group_keeps_the_budget(tmp_path):
    from cnnjax import sweep

    config = small_config(tmp_path, max_steps=9)
    rows = sweep.run_sweep(config, sweep.grid(**{"optim.learning_rate": [1e-3, 2e-3]}), tmp_path / "s",
                           executor="vectorized")  # fmt: skip
    for trial in sweep.trial_dirs(tmp_path / "s", sweep.grid(**{"optim.learning_rate": [1e-3, 2e-3]})):
        results = json.loads((trial / "results.json").read_text())
        assert results["stopped"] == "budget" and results["executor"] == "vectorized"
        events = b"".join(p.read_bytes() for p in (trial / "tensorboard").glob("events.out.*"))  # a member's loggers
        assert b"test/confusion_matrix" in events and b"learning_curves" in events
        assert list((trial / "tensorboard").glob("hparams/events.out.*"))
    assert all(r["status"] == "done" for r in rows)


def test_loggers_get_the_scalars_figures_and_hyperparameters_offline(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = small_config(tmp_path)
    config.train.loggers = "tensorboard,wandb,mlflow"
    results = train.train_and_evaluate(config, tmp_path / "run")
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    run = client.get_run((tmp_path / "run" / "mlflow_run_id").read_text().strip())
    assert run.data.params["optim.learning_rate"] == str(config.optim.learning_rate)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch.val_accuracy")] == [6, 12, 18]
    assert run.data.metrics["final.test_accuracy"] == pytest.approx(results["test_accuracy"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"test_confusion_matrix_18.png",
                                                                        "learning_curves_18.png"}  # fmt: skip
    assert {p.name for p in (tmp_path / "run" / "mlruns").rglob("*.png")} >= {"learning_curves_18.png"}  # not ./mlruns
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 1000
    events = b"".join(p.read_bytes() for p in (tmp_path / "run" / "tensorboard").glob("events.out.*"))
    assert b"test/confusion_matrix" in events and b"learning_curves" in events and b"epoch/val_accuracy" in events
    assert list((tmp_path / "run" / "tensorboard").glob("hparams/events.out.*"))
    config.train.loggers = "tensorboard,comet"
    with pytest.raises(ValueError, match="unknown logger 'comet'; choose from tensorboard, wandb, mlflow"):
        train.check_config(config)


def test_the_tensorboard_logger_leaves_an_installed_torch_unimported(tmp_path):
    """A stand-in ``torch`` package on the path marks an import; the logger still writes its events."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("import sys\nsys.stderr.write('torch imported')\n")
    script = (
        "import sys; from pathlib import Path; from cnnjax import metrics\n"
        "writer = metrics.TensorBoardLogger(Path(sys.argv[1]), 0, 'run')\n"
        "writer.scalars({'epoch/val_accuracy': 0.5}, 1); writer.close()\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "False" and "torch imported" not in done.stderr
    assert b"epoch/val_accuracy" in b"".join(p.read_bytes() for p in (tmp_path / "tensorboard").glob("events.out.*"))


def test_convergence_criteria_end_training_and_say_which_fired_and_when(tmp_path):
    baseline = train.train_and_evaluate(small_config(tmp_path, num_epochs=4), tmp_path / "baseline")
    records = metrics.read_records(tmp_path / "baseline" / "metrics.jsonl")
    losses = [r["train_loss"] for r in records if r["kind"] == "epoch"]
    assert baseline["stopped"] == "num_epochs" and baseline["convergence"] is None and losses[1] < losses[0]
    config = small_config(tmp_path, num_epochs=4, stop_train_loss=(losses[0] + losses[1]) / 2)
    results = train.train_and_evaluate(config, tmp_path / "loss")
    assert results["stopped"] == "convergence" and results["epochs"] == 2
    assert results["convergence"] == {"criterion": f"train.stop_train_loss={config.train.stop_train_loss:g}",
                                      "value": losses[1], "epoch": 2, "step": 12}  # fmt: skip
    average = None  # the moving average of the logged gradient norms, as documented
    for r in (r for r in records if r["kind"] == "train" and r["step"] <= 6):
        average = r["grad_norm"] if average is None else 0.9 * average + 0.1 * r["grad_norm"]
    config = small_config(tmp_path, num_epochs=4, stop_grad_norm=average * 1.0001)  # the baseline until it fires
    results = train.train_and_evaluate(config, tmp_path / "grad")
    assert results["stopped"] == "convergence" and results["convergence"]["epoch"] == 1
    assert results["convergence"]["value"] == pytest.approx(average, rel=1e-12)
    config.train.stop_grad_norm = -1.0
    with pytest.raises(ValueError, match="train.stop_grad_norm"):
        train.check_config(config)


def test_early_stopping_by_loss_or_accuracy_with_a_minimum_improvement():
    config = base_config().train
    config.update(early_stopping_patience=2, early_stopping_min_delta=0.01)
    evaluation = lambda loss, accuracy: train.Evaluation(loss, accuracy, accuracy, np.zeros((2, 2)))  # noqa: E731
    meta = train.initial_meta()
    history = [(1.0, 0.50), (0.9, 0.505), (0.895, 0.52), (0.8, 0.52)]
    assert [train.update_best(meta, e, evaluation(*v), config) for e, v in enumerate(history, 1)] == [
        True,
        False,
        True,
        False,
    ]  # fmt: skip  -- +0.005 does not count, +0.02 over the best does
    assert meta["best_epoch"] == 3 and not meta["stopped_early"]
    config.early_stopping_metric = "val_loss"
    meta = train.initial_meta()
    assert [train.update_best(meta, e, evaluation(*v), config) for e, v in enumerate(history, 1)] == [
        True, True, False, True]  # fmt: skip
    assert meta["best_val_loss"] == 0.8 and meta["best_val_accuracy"] == 0.52 and meta["best_epoch"] == 4
    assert not train.update_best(meta, 5, evaluation(0.795, 0.6), config)  # 0.005 lower: not enough
    assert not train.update_best(meta, 6, evaluation(0.9, 0.6), config) and meta["stopped_early"]
    config.early_stopping_metric = "val_f1"
    with pytest.raises(ValueError, match="train.early_stopping_metric"):
        from cnnjax import config as config_lib

        whole = base_config()
        whole.train.early_stopping_metric = "val_f1"
        config_lib.validate(whole)


def test_per_layer_gradient_norms_show_sigmoid_vanishing_against_relu(tmp_path):
    first_records = {}
    for activation in ("relu", "sigmoid"):
        config = small_config(tmp_path, num_epochs=1, log_every=1)
        config.model.activation = activation
        train.train_and_evaluate(config, tmp_path / activation)
        records = [r for r in metrics.read_records(tmp_path / activation / "metrics.jsonl") if r["kind"] == "train"]
        layers = {k: v for k, v in records[0].items() if k.startswith("grad_norm/")}
        assert set(layers) == {f"grad_norm/{n}" for n in ("conv1", "conv2", "fc1", "fc2", "logits")}
        assert np.sqrt(sum(v**2 for v in layers.values())) == pytest.approx(records[0]["grad_norm"], rel=1e-5)
        first_records[activation] = layers
        results = json.loads((tmp_path / activation / "results.json").read_text())
        assert results["layer_grad_norms"] == {k.removeprefix("grad_norm/"): v for k, v in records[-1].items()
                                               if k.startswith("grad_norm/")}  # fmt: skip
    ratio = {a: r["grad_norm/conv1"] / r["grad_norm/logits"] for a, r in first_records.items()}
    assert ratio["sigmoid"] < ratio["relu"] / 10  # each sigmoid layer passes at most a quarter of the gradient


def test_dead_relu_units_are_counted_per_layer_over_the_whole_split(rng):
    model = models.get("lenet")
    params = dict(model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"])
    params["conv1"] = {**params["conv1"], "bias": params["conv1"]["bias"].at[:3].set(-1e3)}  # 3 of 6 channels off
    images = jnp.asarray(rng.normal(size=(23, 28, 28, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 23), jnp.int32)
    step = jax.jit(train.eval_step_fn(model, "cross_entropy", diagnostics=True))
    evaluation = train.evaluate(step, {"params": params, "model_state": {}}, images, labels, 10, None)  # padded
    _, captured = model.apply({"params": params}, images, capture_intermediates=True)
    outputs = {name: np.asarray(out["__call__"][0]) for name, out in captured["intermediates"].items()
               if name.endswith("_relu")}  # fmt: skip
    expected = {name: float(np.mean(~np.any(y > 0, axis=tuple(range(y.ndim - 1))))) for name, y in outputs.items()}
    assert evaluation.dead_units == expected and expected["conv1_relu"] == 0.5 and len(expected) == 4
    record = train.make_epoch_record(1, 1, np.ones(3), 0.1, 1.0, 1.0, evaluation)
    assert record["dead_units/conv1_relu"] == 0.5
    quiet = jax.jit(train.eval_step_fn(model, "cross_entropy"))
    assert train.evaluate(quiet, {"params": params, "model_state": {}}, images, labels, 10, None).dead_units == {}


def test_dead_units_are_warned_about_and_diagnostics_can_be_switched_off(tmp_path, capsys):
    config = small_config(tmp_path, num_epochs=2)
    config.model.bias_init = "constant:-10"  # every ReLU starts below zero everywhere
    results = train.train_and_evaluate(config, tmp_path / "dead")
    out = capsys.readouterr().out
    layers = "conv1_relu, conv2_relu, fc1_relu, fc2_relu"
    assert out.count(f"warning: more than half of the units of {layers} are dead") == 1  # once, at epoch 1
    assert results["dead_units"] == dict.fromkeys(layers.split(", "), 1.0)
    epochs = [r for r in metrics.read_records(tmp_path / "dead" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert all(r["dead_units/fc1_relu"] == 1.0 for r in epochs)
    config = small_config(tmp_path, num_epochs=1, diagnostics=False)
    results = train.train_and_evaluate(config, tmp_path / "off")
    records = metrics.read_records(tmp_path / "off" / "metrics.jsonl")
    assert results["dead_units"] == {} and results["layer_grad_norms"] == {}
    assert not any(k.startswith(("dead_units/", "grad_norm/")) for r in records for k in r)
    assert all(r["grad_norm"] > 0 for r in records if r["kind"] == "train")  # the global norm is still logged


def test_a_model_at_chance_level_is_warned_about(tmp_path, capsys):
    config = small_config(tmp_path, num_epochs=2)
    config.model.kernel_init = "zeros"  # nothing trainable in front of the last layer's bias: uniform predictions
    config.optim.learning_rate = 1e-7
    results = train.train_and_evaluate(config, tmp_path / "stuck")
    assert results["chance_level_epochs"] == [1, 2]
    out = capsys.readouterr().out
    assert "warning: the model is not learning: the training loss stayed at chance level, ln(10) = 2.3026, for " \
           "epoch 1; check the learning rate, the last layer, the labels" in out  # fmt: skip
    assert train.train_and_evaluate(small_config(tmp_path), tmp_path / "learning")["chance_level_epochs"] == []
