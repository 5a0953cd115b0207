"""Data parallelism with ``jax.sharding``: a one-axis mesh ('data') over the devices of one or several hosts.

Parameters, optimizer state and the (small) datasets are replicated; each batch's indices are split along 'data', so
every device gathers and processes its slice and XLA inserts the gradient all-reduce. The same code runs on one CPU,
several GPUs, a TPU slice, or several processes joined by :func:`initialize_distributed`.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int) -> None:
    """Joins this process to a multi-process run (``jax.distributed.initialize``), before any device is used. CPU
    collectives go through gloo over TCP, so several processes on one or many machines work without accelerators."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)


THREADS_VARIABLE = "PJRT_NPROC"  # the size of XLA:CPU's thread pools (default: the number of cores)


def split_cpu(count: int) -> None:
    """Makes the host CPU ``count`` JAX devices (``config.train.cpu_devices``; 0 keeps JAX's default, one device).

    With data parallelism over them each device runs its slice of the batch, so operations XLA:CPU runs on one thread
    keep every core busy. With several devices conv2d keeps XLA's convolutions, so on a 2-core CPU one device with
    oneDNN's is faster (docs/scaling.md, bench/cpu_devices.py). It only takes effect before
    JAX's first operation (the launcher checks the config first); afterwards a different count raises a ValueError.
    GPU and TPU runs are unaffected.

    XLA:CPU sizes its thread pools by the number of cores (or ``PJRT_NPROC``); a device waiting in the gradients'
    all-reduce holds one of those threads, and with as many devices as threads a 2-device run on 2 cores once hung in
    that rendezvous. So, unless ``PJRT_NPROC`` is set, the pools get one thread per device on top of the cores.
    """
    if not count:
        return
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX has started: fine if it already has that many CPU devices
        started_with = len(jax.devices("cpu"))
        if started_with != count:
            raise ValueError(
                f"config.train.cpu_devices={count} cannot take effect: JAX already started with {started_with} CPU "
                f"device(s); set it before JAX's first operation (launch.py does), or start the process with "
                f"JAX_NUM_CPU_DEVICES={count}"
            ) from None
        return
    if count > 1:  # read when JAX starts; each device blocks a thread while it waits in the gradients' all-reduce
        os.environ.setdefault(THREADS_VARIABLE, str((os.cpu_count() or 1) + count))


def num_devices(requested: int) -> int:
    """How many devices a run uses: ``requested``, or all of them (over every process) when it is 0."""
    available = jax.device_count()
    if requested < 0 or requested > available:
        raise ValueError(
            f"config.train.num_devices={requested} is invalid: this run has {available} devices (0 uses all of them)"
        )
    return requested or available


def make_mesh(requested: int) -> Mesh:
    """A mesh with one axis, 'data', over the first ``num_devices(requested)`` devices."""
    return Mesh(np.array(jax.devices()[: num_devices(requested)]), ("data",))


def _put(array, sharding: NamedSharding) -> jax.Array:
    """A global array from a host value that every process holds in full (works across processes)."""
    host = np.asarray(array)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree, mesh: Mesh):
    """Every leaf of ``tree`` copied to all devices of ``mesh``."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda leaf: _put(leaf, sharding), tree)


def shard_batch(tree, mesh: Mesh):
    """Every leaf of ``tree`` split along its first (batch) axis over the 'data' axis of ``mesh``."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return jax.tree_util.tree_map(lambda leaf: _put(leaf, sharding), tree)


def is_chief() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0
