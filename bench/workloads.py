"""The models the benchmarks train, as cnnjax builds them, with their jitted train step and random data.

The PyTorch twins of these models are in bench/torch_twins.py.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from cnnjax import backend, models, onednn, optim, parallel, train
from cnnjax.config import base_config
from experiments import cifar_cnn, mnist_cnn, resnet, resnet9

BATCH = 128
MNIST_CNN = mnist_cnn.get_config()


class Workload(NamedTuple):
    make_model: Callable[[], object]
    image_shape: tuple[int, int, int]  # (H, W, C)
    xla: backend.XlaOptions = backend.XlaOptions()  # its experiment's config.train.xla_cpu_* settings
    cpu_devices: int = 1  # how many CPU devices its experiment trains on (config.train.cpu_devices, at least 1)


MODELS = {
    "lenet": Workload(lambda: models.get("lenet"), (28, 28, 1)),
    "mnist_cnn": Workload(
        lambda: models.get(**MNIST_CNN.model), (28, 28, 1), cpu_devices=max(1, MNIST_CNN.train.cpu_devices)
    ),
    "cifar_cnn": Workload(
        lambda: models.get("cifar_cnn"), (32, 32, 3), backend.XlaOptions.of(cifar_cnn.get_config().train)
    ),
    "resnet20": Workload(
        lambda: models.get("resnet", depth=20), (32, 32, 3), backend.XlaOptions.of(resnet.get_config().train)
    ),
    "resnet9": Workload(
        lambda: models.get("resnet9", width=16), (28, 28, 1), backend.XlaOptions.of(resnet9.get_config().train)
    ),
}


def split_cpu_for(names: list[str]) -> None:
    """Splits the CPU into as many devices as the experiments of models ``names`` train on; call it before JAX's
    first operation (``parallel.split_cpu``)."""
    parallel.split_cpu(max(MODELS[name].cpu_devices for name in names))


def train_workload(name: str, steps: int, devices: int | None = None, xla: backend.XlaOptions | None = None):
    """(model, image shape, train step, initial state, step arguments per batch) for `steps` batches of BATCH.

    The step is cnnjax's real one (Adam 1e-3, device-resident data, donated state), data-parallel over ``devices``
    CPU devices (default: as its experiment trains), compiled with the XLA:CPU options ``xla`` (default: its
    experiment's); call it as ``step(state, *args)`` for each ``args`` in the returned list.
    """
    workload = MODELS[name]
    model = workload.make_model()
    optimizer = optim.make_optimizer(base_config().optim, steps, 1)
    step = train.make_train_step(
        model, optimizer, "cross_entropy", lambda key, x: x, xla=workload.xla if xla is None else xla
    )
    mesh = parallel.make_mesh(devices or workload.cpu_devices)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((steps * BATCH, *workload.image_shape)).astype(np.float32)
    labels = rng.integers(0, 10, steps * BATCH).astype(np.int32)
    key = jax.random.key(0)
    state = train.init_state(model, optimizer, workload.image_shape, key)
    images, labels, state, key_data = parallel.replicate((images, labels, state, jax.random.key_data(key)), mesh)
    key = jax.random.wrap_key_data(key_data)
    batches = [
        (images, labels, parallel.shard_batch(index, mesh), key)
        for index in np.arange(steps * BATCH, dtype=np.int32).reshape(steps, BATCH)
    ]
    return model, workload.image_shape, step, state, batches


def run_steps(step, state, batches):
    """Runs the step over all batches and waits for the result; returns the final state."""
    for args in batches:
        state, metrics = step(state, *args)
    jax.block_until_ready(metrics)
    return state


def runner(step, state, batches) -> Callable[[], None]:
    """A callable that runs ``step`` over ``batches`` once more, from the state its previous call left (the step
    donates its state)."""
    holder = [state]

    def run():
        holder[0] = run_steps(step, holder[0], batches)

    return run


def interleaved_medians(runs: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds of each run over ``rounds`` rounds that call every run in turn, after one warm-up call each:
    the machine is shared and noisy, so only runs timed side by side compare."""
    times = {label: [] for label in runs}
    for run in runs.values():
        run()
    for _ in range(rounds):
        for label, run in runs.items():
            start = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(seconds) for label, seconds in times.items()}


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), e.g. 'AMD EPYC 7B13', or the platform's processor string."""
    try:
        return re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()).group(1).strip()
    except (OSError, AttributeError):
        return platform.processor() or platform.machine()


def vector_isa() -> str:
    """The widest x86 vector extension the CPU reports: 'avx512', 'avx2', or '' (other CPUs)."""
    flags = onednn.cpu_flags()
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else ""


def result_path(name: str) -> Path:
    """``bench/results/<name>-<cpu>-<isa>.json`` for this machine's CPU: one model name (e.g. 'AMD EPYC') can stand
    for CPUs with different vector units, whose figures differ."""
    cpu = re.sub(r"[^a-z0-9]+", "-", f"{cpu_name()} {vector_isa()}".lower()).strip("-")
    return Path(__file__).resolve().parent / "results" / f"{name}-{cpu}.json"


def kept_from_before(result: dict, name: str, same: tuple[str, ...] = ()) -> dict:
    """Adds to ``result['experiments']`` the experiments of this machine's earlier ``<name>`` result file that this
    run did not measure, if that file has the same values of the keys ``same``; returns experiment -> {commit, date}
    of the run that measured each kept one."""
    path = result_path(name)
    if not path.exists():
        return {}
    before = json.loads(path.read_text())
    if any(before.get(key) != result[key] for key in same):
        return {}
    measured_at = {}
    for experiment, entry in before["experiments"].items():
        if experiment not in result["experiments"]:
            result["experiments"][experiment] = entry
            measured_at[experiment] = before.get("measured_at", {}).get(
                experiment, {k: before[k] for k in ("commit", "date")}
            )
    return measured_at


def write_result(name: str, result: dict) -> Path:
    """Writes ``bench/results/<name>-<cpu>-<isa>.json``: ``result`` with the hardware, versions, commit and date."""
    import jaxlib

    cpu = cpu_name()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {
        "benchmark": name,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "vector_isa": vector_isa(),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        **result,
    }
    path = result_path(name)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
