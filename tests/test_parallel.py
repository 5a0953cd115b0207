"""Data parallelism over 8 (virtual CPU) devices and over a CPU split in two (train.cpu_devices), two processes
joined by jax.distributed, and bfloat16 compute."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from cnnjax import metrics, parallel, train
from tests import fakes
from tests.fakes import final_state, small_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dataset(tmp_path):
    fakes.make_idx_dataset(tmp_path / "src", n_train=120, n_test=30)
    return tmp_path


def launch(workdir: Path, data_root: Path, *extra, env=None, epochs=2):
    overrides = {
        "data.name": "mnist", "data.data_dir": data_root / "src", "data.tfds_dir": data_root / "tfds",
        "data.batch_size": 16, "data.eval_batch_size": 8, "data.validation_fraction": 0.2,
        "train.num_epochs": epochs, "train.log_every": 2,
    }  # fmt: skip
    command = [sys.executable, "launch.py", "--experiment=lenet", f"--workdir={workdir}"]
    command += [f"--config.{k}={v}" for k, v in overrides.items()] + list(extra)
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def finish(process) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return output


def epoch_losses(workdir: Path) -> list[float]:
    return [r["train_loss"] for r in metrics.read_records(workdir / "metrics.jsonl") if r["kind"] == "epoch"]


def test_eight_devices_match_one_and_their_checkpoint_restores_on_one(dataset):
    eight = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    finish(launch(dataset / "one", dataset, "--config.train.num_devices=1", env=eight))
    output = finish(launch(dataset / "eight", dataset, "--config.train.num_devices=8", env=eight))
    assert "on 8 device(s)" in output
    np.testing.assert_allclose(epoch_losses(dataset / "eight"), epoch_losses(dataset / "one"), rtol=1e-4)
    one, many = (json.loads((dataset / d / "results.json").read_text()) for d in ("one", "eight"))
    assert abs(one["test_loss"] - many["test_loss"]) < 1e-3
    # config.train.cpu_devices splits the CPU of a process without forced devices: the same run on two
    output = finish(launch(dataset / "two", dataset, "--config.train.cpu_devices=2", "--config.train.num_devices=0"))
    assert "on 2 device(s)" in output
    np.testing.assert_allclose(epoch_losses(dataset / "two"), epoch_losses(dataset / "one"), rtol=1e-4)
    # the 8-device checkpoint resumes in a 1-device process (no forced device count) for a third epoch
    output = finish(launch(dataset / "eight", dataset, "--config.train.num_devices=1", epochs=3))
    assert "resuming from the checkpoint at step 12" in output and len(epoch_losses(dataset / "eight")) == 3


def test_two_processes_on_loopback_match_one_process(dataset):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    finish(launch(dataset / "single", dataset))
    flags = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--config.train.num_devices=0"]
    workers = [launch(dataset / "multi", dataset, *flags, f"--process_id={i}") for i in (1, 0)]
    outputs = [finish(w) for w in workers]
    assert "on 2 device(s)" in outputs[1]
    np.testing.assert_allclose(epoch_losses(dataset / "multi"), epoch_losses(dataset / "single"), rtol=1e-4)
    assert json.loads((dataset / "multi" / "results.json").read_text())["status"] == "done"


def test_bfloat16_compute_trains_with_float32_parameters(tmp_path):
    config = small_config(tmp_path, compute_dtype="bfloat16", num_epochs=4)
    with jax.numpy_dtype_promotion("standard"):
        results = train.train_and_evaluate(config, tmp_path / "run")
    losses = epoch_losses(tmp_path / "run")
    assert results["status"] == "done" and losses[-1] < losses[0]
    _, state, _ = final_state(tmp_path / "run")
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves((state["params"], state["opt_state"]))}
    assert np.dtype("float32") in dtypes and np.dtype("bfloat16") not in {np.dtype(d) for d in dtypes}


def test_cpu_devices_cannot_change_after_jax_started(tmp_path):
    jax.devices()  # JAX has started in this process, with one CPU device
    parallel.split_cpu(1)  # what it has: nothing to change
    config = small_config(tmp_path, cpu_devices=2)
    threads = os.environ.get(parallel.THREADS_VARIABLE)
    with pytest.raises(ValueError, match=r"cpu_devices=2 cannot take effect: JAX already started with 1 CPU device"):
        train.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert os.environ.get(parallel.THREADS_VARIABLE) == threads  # nothing changed for this process or its children


def test_batch_must_split_evenly_over_devices(tmp_path):
    config = small_config(tmp_path, num_devices=2)
    with pytest.raises(ValueError, match=r"config.train.num_devices=2 is invalid: this run has 1 devices"):
        train.train_and_evaluate(config, tmp_path / "run")


SPLIT_CONV_CHECK = """
import functools
import jax, jax.numpy as jnp, numpy as np
from cnnjax import functional as F, parallel

mesh = parallel.make_mesh(0)
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 12, 12, 3)).astype(np.float32)
kernel = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)

def loss(kernel, x, lowering):
    return jnp.sum(jnp.tanh(F.conv2d(x, kernel, stride=2, padding="SAME", lowering=lowering)) ** 2)

step = jax.jit(jax.value_and_grad(functools.partial(loss, lowering="onednn"), argnums=(0, 1)))
args = parallel.replicate(kernel, mesh), parallel.shard_batch(x, mesh)
with jax.set_mesh(mesh):
    hlo, split = step.lower(*args).compile().as_text(), step(*args)
expected = jax.jit(jax.value_and_grad(functools.partial(loss, lowering="xla"), argnums=(0, 1)))(kernel, x)
jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), split, expected)
print(jax.device_count(), hlo.count("custom_call_target=\\"cnnjax_onednn_conv\\""), "all-gather" in hlo)
"""


def test_onednn_convolutions_split_the_batch_over_a_mesh_of_cpu_devices():
    """Traced under a mesh of two CPU devices, ``lowering='onednn'`` runs oneDNN's forward pass, input gradient and
    kernel gradient on each device's half of the batch, with no all-gather of the batch before them, and gives the
    values and gradients of XLA's convolution (the kernel gradient summed over the devices)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    run = subprocess.run([sys.executable, "-c", SPLIT_CONV_CHECK], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["2", "3", "False"]
