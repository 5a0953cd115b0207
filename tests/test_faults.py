"""Faults: damaged checkpoints, preemption signals, two writers on one directory, unusable run directories, full
disks, and sweeps killed at random moments. Each ends in one clear line and loses nothing."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cnnjax import checkpoint, metrics, preemption, rundir, sweep, train
from cnnjax.checkpoint import Checkpoints
from tests.fakes import comparable, final_state, on_training_step, small_config

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


# ----------------------------------------------------------------------------------------------------------------------
# Damaged checkpoints
# ----------------------------------------------------------------------------------------------------------------------


def tiny_state(value: int) -> dict:
    return {"step": jnp.array(value), "params": {"dense": {"kernel": jnp.full((4, 3), float(value))}},
            "opt_state": [jnp.arange(5.0) * value]}  # fmt: skip


def saved_checkpoints(directory: Path, steps=(1, 2, 3)) -> Checkpoints:
    checkpoints = Checkpoints(directory, keep=3)
    for step in steps:
        checkpoints.save(step, tiny_state(step), {"step": step})
    return checkpoints


def array_files(step_dir: Path) -> list[Path]:
    """The OCDBT data files holding the arrays (the merged ``d/`` ones first)."""
    return sorted((step_dir / "state").glob("d/*")) + sorted((step_dir / "state").glob("ocdbt.process_0/d/*"))


def overwrite(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


DAMAGE = {
    "arrays overwritten": lambda d: [overwrite(f) for f in array_files(d)],
    "array file truncated": lambda d: os.truncate(array_files(d)[0], 10),
    "array file missing": lambda d: array_files(d)[0].unlink(),
    "meta not JSON": lambda d: (d / "meta" / "metadata").write_bytes(b"\xd3\x00garbage"),
    # without checksums.json (a write killed just before it), Orbax itself must find the damage
    "unverified, metadata overwritten": lambda d: (
        (d / checkpoint.CHECKSUMS).unlink(),
        overwrite(d / "state" / "_METADATA"),
    ),  # fmt: skip
    "unverified, arrays overwritten": lambda d: (
        (d / checkpoint.CHECKSUMS).unlink(),
        [overwrite(f) for f in array_files(d)],
    ),  # fmt: skip
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_moved_aside_and_the_previous_one_restored(tmp_path, capsys, damage):
    checkpoints = saved_checkpoints(tmp_path)
    DAMAGE[damage](tmp_path / "periodic" / "3")
    step, state, meta = checkpoints.restore_latest(tiny_state(0))
    assert step == 2 and meta == {"step": 2}
    jax.tree_util.tree_map(np.testing.assert_array_equal, state, tiny_state(2))
    assert (tmp_path / "periodic" / "3.corrupt").is_dir() and not (tmp_path / "periodic" / "3").exists()
    warning = capsys.readouterr().out
    assert "warning: checkpoint step 3" in warning and "moved to 3.corrupt" in warning
    checkpoints.save(3, tiny_state(3), {"step": 3})  # the step is written again; the damaged copy stays aside
    assert checkpoints.restore_latest(tiny_state(0))[0] == 3 and (tmp_path / "periodic" / "3.corrupt").is_dir()


def test_no_readable_checkpoint_is_one_error_naming_the_directory(tmp_path):
    checkpoints = saved_checkpoints(tmp_path, steps=(1, 2))
    for step in (1, 2):
        DAMAGE["arrays overwritten"](tmp_path / "periodic" / str(step))
    with pytest.raises(rundir.RunDirectoryError, match="no checkpoint in .*periodic can be read.*from the start"):
        checkpoints.restore_latest(tiny_state(0))
    assert sorted(p.name for p in (tmp_path / "periodic").iterdir()) == ["1.corrupt", "2.corrupt"]
    assert Checkpoints(tmp_path, keep=3).restore_latest(tiny_state(0)) is None  # run again: a new start


def test_another_architecture_is_an_error_and_moves_nothing(tmp_path):
    checkpoints = saved_checkpoints(tmp_path)
    other = {**tiny_state(0), "params": {"dense": {"kernel": jnp.zeros((4, 5))}}}
    with pytest.raises(ValueError, match="different architecture.*checkpoint \\(4, 3\\) vs model \\(4, 5\\)"):
        checkpoints.restore_latest(other)
    assert sorted(p.name for p in (tmp_path / "periodic").iterdir()) == ["1", "2", "3"]


def test_a_damaged_best_checkpoint_falls_back_to_the_periodic_one_of_its_step(tmp_path, capsys):
    checkpoints = saved_checkpoints(tmp_path, steps=(6, 12))
    checkpoints.save_best(6, tiny_state(6), {"step": 6})
    DAMAGE["arrays overwritten"](tmp_path / "best" / "6")
    meta = {"best_epoch": 1}
    state, tested = train._tested_state(checkpoints, tiny_state(12), meta, 6, has_validation=True)
    assert tested == "periodic step 6" and (tmp_path / "best" / "6.corrupt").is_dir()
    jax.tree_util.tree_map(np.testing.assert_array_equal, state, tiny_state(6))
    DAMAGE["arrays overwritten"](tmp_path / "periodic" / "6")  # the best step's periodic copy is damaged too
    state, tested = train._tested_state(checkpoints, tiny_state(12), meta, 6, has_validation=True)
    assert tested.startswith("final") and int(state["step"]) == 12
    assert "testing the final parameters instead" in capsys.readouterr().out


def test_read_variables_names_a_damaged_checkpoint(tmp_path):
    saved_checkpoints(tmp_path, steps=(1,))
    DAMAGE["arrays overwritten"](tmp_path / "periodic" / "1")
    with pytest.raises(ValueError, match="checkpoint step 1 in .*periodic is damaged"):
        checkpoint.read_variables(tmp_path, which="latest")


# ----------------------------------------------------------------------------------------------------------------------
# Full disks and unusable run directories
# ----------------------------------------------------------------------------------------------------------------------


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpoints = saved_checkpoints(tmp_path, steps=(1,))

    async def full(*args, **kwargs):
        disk_full()

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", full)  # the state's arrays are being written
    with pytest.raises(rundir.RunDirectoryError) as error:
        checkpoints.save(2, tiny_state(2), {"step": 2})
    message = str(error.value)
    assert "\n" not in message and "checkpoint step 2" in message and "checkpoint step 1 is intact" in message
    assert "no space left on the device" in message and "MB are free" in message
    monkeypatch.undo()
    checkpoint.verify(tmp_path / "periodic" / "1")
    assert Checkpoints(tmp_path, keep=3).restore_latest(tiny_state(0))[0] == 1


def test_a_full_disk_while_copying_the_best_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    checkpoints = saved_checkpoints(tmp_path, steps=(1,))
    checkpoints.save_best(2, tiny_state(2), {"step": 2})
    real_copy, real_copytree = shutil.copy2, shutil.copytree

    def copy_then_full(source, target, **kwargs):
        real_copy(source, target, **kwargs)
        if Path(target).name == checkpoint.CHECKSUMS or Path(source).parent.name == "d":
            disk_full()

    monkeypatch.setattr(
        checkpoint.shutil, "copytree", lambda s, t, *_: real_copytree(s, t, copy_function=copy_then_full)
    )
    with pytest.raises(rundir.RunDirectoryError) as error:
        checkpoints.save(2, tiny_state(2), {"step": 2})
    message = str(error.value)
    assert "\n" not in message and "checkpoint step 2" in message and "checkpoint step 1 is intact" in message
    assert "no space left on the device" in message
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "periodic").iterdir()) == ["1"]  # nothing half-copied is left
    assert Checkpoints(tmp_path, keep=3).restore_latest(tiny_state(0))[0] == 1
    checkpoints.save(2, tiny_state(2), {"step": 2})
    assert Checkpoints(tmp_path, keep=3).restore_latest(tiny_state(0))[0] == 2


def test_a_full_disk_leaves_the_metrics_log_and_json_files_as_they_were(tmp_path, monkeypatch):
    writer = metrics.MetricsWriter(tmp_path)
    writer.write({"kind": "train", "step": 1, "loss": 1.0})
    before = (tmp_path / "metrics.jsonl").read_bytes()
    real_write = os.write

    def half_then_full(fd, data):  # a record cut short by the full disk
        if len(data) > 8:
            return real_write(fd, data[: len(data) // 2])
        disk_full()

    monkeypatch.setattr(metrics.os, "write", half_then_full)
    with pytest.raises(rundir.RunDirectoryError, match="a record of the metrics log.*earlier records are intact"):
        writer.write({"kind": "train", "step": 2, "loss": 0.5})
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_bytes() == before
    writer.close()

    metrics.write_json(tmp_path / "results.json", {"status": "running"})
    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(rundir.RunDirectoryError, match="results.json.*no space left.*previous results.json is intact"):
        metrics.write_json(tmp_path / "results.json", {"status": "done"})
    monkeypatch.undo()
    assert json.loads((tmp_path / "results.json").read_text()) == {"status": "running"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "results.json", "tensorboard"]


def test_a_full_disk_during_training_is_one_line_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path, monkeypatch):
    config = small_config(tmp_path)
    train.train_and_evaluate(config, tmp_path / "whole")
    real_save, saves = ocp.StandardCheckpointHandler.async_save, [0]

    async def full_at_the_second_save(*args, **kwargs):
        saves[0] += 1
        if saves[0] == 2:  # epoch 1's best checkpoint is written (its periodic one is a copy); epoch 2's is not
            disk_full()
        return await real_save(*args, **kwargs)

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", full_at_the_second_save)
    with pytest.raises(rundir.RunDirectoryError, match="writing checkpoint step 12 .* checkpoint step 6 is intact"):
        train.train_and_evaluate(config, tmp_path / "full")
    assert json.loads((tmp_path / "full" / "results.json").read_text())["status"] == "failed"
    monkeypatch.undo()
    results = train.train_and_evaluate(config, tmp_path / "full")
    whole, full = final_state(tmp_path / "whole"), final_state(tmp_path / "full")
    jax.tree_util.tree_map(np.testing.assert_array_equal, whole[1], full[1])
    assert comparable(metrics.read_records(tmp_path / "whole" / "metrics.jsonl")) == comparable(
        metrics.read_records(tmp_path / "full" / "metrics.jsonl")
    )
    assert results["test_accuracy"] == json.loads((tmp_path / "whole" / "results.json").read_text())["test_accuracy"]


def denied(**kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")


def test_unusable_run_directories_are_one_line_naming_the_path(tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(rundir.RunDirectoryError, match="--workdir=.*a_file is a file, not a directory"):
        rundir.prepare(a_file)
    with pytest.raises(rundir.RunDirectoryError, match="cannot be created: .*a_file is a file"):
        rundir.prepare(a_file / "run")
    monkeypatch.setattr(rundir.tempfile, "TemporaryFile", denied)  # as root, permissions do not stop a write
    with pytest.raises(rundir.RunDirectoryError, match="run is not writable \\(Permission denied\\); fix its perm"):
        rundir.prepare(tmp_path / "run")
    monkeypatch.undo()
    config = small_config(tmp_path)
    with pytest.raises(rundir.RunDirectoryError, match="is a file"):  # before any data is loaded
        train.train_and_evaluate(config, a_file)
    assert not (tmp_path / "tfds").exists()


# ----------------------------------------------------------------------------------------------------------------------
# One writer per run directory
# ----------------------------------------------------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from pathlib import Path
from cnnjax import rundir
with rundir.exclusive(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_is_refused_and_a_killed_writer_does_not_block(tmp_path):
    run = rundir.prepare(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = small_config(tmp_path)
        with pytest.raises(rundir.RunDirectoryError, match=f"in use by another cnnjax process \\(pid {holder.pid} "):
            train.train_and_evaluate(config, run)
        with pytest.raises(rundir.RunDirectoryError, match=f"pid {holder.pid}"):
            sweep.run_sweep(config, [{"optim.learning_rate": 1e-3}], run, executor="sequential")
    finally:
        holder.kill()
        holder.wait()
    with rundir.exclusive(run):  # the kernel released the dead holder's lock
        assert json.loads((run / rundir.LOCK).read_text())["pid"] == os.getpid()


# ----------------------------------------------------------------------------------------------------------------------
# Preemption
# ----------------------------------------------------------------------------------------------------------------------


def test_the_first_signal_is_polled_and_a_second_one_stops_at_once():
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    with pytest.raises(KeyboardInterrupt), preemption.handling():
        os.kill(os.getpid(), signal.SIGINT)  # before the loop: nothing new to save, stop at once
        pytest.fail("a signal before the training loop must raise")
    with pytest.raises(KeyboardInterrupt), preemption.handling():
        preemption.start_polling()
        os.kill(os.getpid(), signal.SIGINT)
        assert preemption.requested(1) == signal.SIGINT and preemption.received() == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)
        pytest.fail("a second signal must raise at once")
    assert signal.getsignal(signal.SIGINT) == before  # the handlers are restored
    with preemption.handling():
        assert preemption.received() is None  # a new run starts without the old signal


def test_a_second_signal_while_a_checkpoint_is_written_stops_after_the_write(tmp_path):
    state, meta = {"params": {"w": np.arange(4.0)}}, {"epoch": 1}
    with pytest.raises(KeyboardInterrupt), preemption.handling():
        preemption.start_polling()
        os.kill(os.getpid(), signal.SIGINT)
        with preemption.checkpoint_write():
            os.kill(os.getpid(), signal.SIGINT)  # the second one, in the middle of the write
            Checkpoints(tmp_path, 2).save(3, state, meta)
        pytest.fail("the deferred signal must raise once the write is done")
    checkpoints = Checkpoints(tmp_path, 2)
    assert checkpoints.latest_step() == 3
    checkpoint.verify(tmp_path / "periodic" / "3")  # complete, with its checksums


def test_a_run_killed_between_its_test_and_its_results_is_tested_once_again(tmp_path):
    config = small_config(tmp_path)
    first = train.train_and_evaluate(config, tmp_path / "run")
    metrics.write_json(tmp_path / "run" / "results.json", {"status": "running"})  # the kill came before this write
    again = train.train_and_evaluate(config, tmp_path / "run")
    records = metrics.read_records(tmp_path / "run" / "metrics.jsonl")
    assert sum(r["kind"] == "test" for r in records) == 1 and again["test_accuracy"] == first["test_accuracy"]


def test_sigterm_checkpoints_and_a_damaged_newest_checkpoint_still_resumes_bitwise(tmp_path, monkeypatch):
    config = small_config(tmp_path, checkpoint_every=3)
    train.train_and_evaluate(config, tmp_path / "whole")
    before = signal.getsignal(signal.SIGTERM)
    on_training_step(monkeypatch, 11, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(preemption.Interrupted, match="interrupted by SIGTERM at step 11") as stopped:
        train.train_and_evaluate(config, tmp_path / "resumed")
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    results = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert results["status"] == "interrupted" and results["step"] == 11 and results["signal"] == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers are restored
    periodic = tmp_path / "resumed" / "checkpoints" / "periodic"
    assert sorted(int(p.name) for p in periodic.iterdir()) == [6, 9, 11]
    DAMAGE["arrays overwritten"](periodic / "11")
    monkeypatch.undo()
    results = train.train_and_evaluate(config, tmp_path / "resumed")
    assert (periodic / "11.corrupt").is_dir()
    whole, resumed = final_state(tmp_path / "whole"), final_state(tmp_path / "resumed")
    assert whole[0] == resumed[0]
    jax.tree_util.tree_map(np.testing.assert_array_equal, whole[1], resumed[1])
    assert comparable(metrics.read_records(tmp_path / "whole" / "metrics.jsonl")) == comparable(
        metrics.read_records(tmp_path / "resumed" / "metrics.jsonl")
    )
    assert results["test_accuracy"] == json.loads((tmp_path / "whole" / "results.json").read_text())["test_accuracy"]
    assert results["tested"] == "best"


def test_sigterm_in_a_vectorized_group_checkpoints_every_member_and_resumes(tmp_path, monkeypatch):
    base = small_config(tmp_path, num_epochs=2)
    points = sweep.grid(**{"optim.learning_rate": [1e-3, 3e-3]})
    whole = sweep.run_sweep(base, points, tmp_path / "whole", executor="vectorized")
    real_group_steps = sweep._group_steps

    def signalling_group_steps(*args):
        group_step, group_eval = real_group_steps(*args)
        calls = [0]

        def step(*step_args):
            calls[0] += 1
            if calls[0] == 8:  # in the second epoch
                os.kill(os.getpid(), signal.SIGTERM)
            return group_step(*step_args)

        return step, group_eval

    monkeypatch.setattr(sweep, "_group_steps", signalling_group_steps)
    with pytest.raises(preemption.Interrupted, match="SIGTERM at step 8"):
        sweep.run_sweep(base, points, tmp_path / "resumed", executor="vectorized")
    table = (tmp_path / "resumed" / "results.md").read_text()
    assert table.count("| interrupted |") == 2
    monkeypatch.undo()
    resumed = sweep.run_sweep(base, points, tmp_path / "resumed", executor="vectorized")
    assert [sweep_row(r) for r in resumed] == [sweep_row(r) for r in whole]
    for trial in sweep.trial_dirs(tmp_path / "resumed", points):
        records = metrics.read_records(trial / "metrics.jsonl")
        assert comparable(records) == comparable(
            metrics.read_records(tmp_path / "whole" / trial.name / "metrics.jsonl")
        )


def sweep_row(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "time_s"}


def launch_lenet(tmp_path: Path, workdir: Path, *extra: str) -> subprocess.Popen:
    config = small_config(tmp_path)
    overrides = [f"--config.{k}={v}" for k, v in (
        ("data.name", "mnist"), ("data.data_dir", config.data.data_dir), ("data.tfds_dir", config.data.tfds_dir),
        ("data.batch_size", 8), ("data.validation_fraction", 0.2), ("train.log_every", 1),
    )]  # fmt: skip
    command = [sys.executable, "launch.py", "--experiment=lenet", f"--workdir={workdir}", *overrides, *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_training(workdir: Path, process: subprocess.Popen, after_step: int = 0, timeout: float = 120) -> None:
    """Waits until ``process`` has logged a training step after ``after_step``."""
    deadline = time.time() + timeout
    records = workdir / "metrics.jsonl"
    while not any(r["kind"] == "train" and r["step"] > after_step for r in metrics.read_records(records)):
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)


def test_launch_stops_promptly_on_sigterm_and_at_once_on_a_second_ctrl_c(tmp_path):
    workdir = tmp_path / "run"
    process = launch_lenet(tmp_path, workdir, "--config.train.num_epochs=500")
    wait_for_training(workdir, process)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    stopped_after = time.time() - sent
    assert process.returncode == 128 + signal.SIGTERM and stopped_after < 10, (stopped_after, stderr[-2000:])
    results = json.loads((workdir / "results.json").read_text())
    assert results["status"] == "interrupted" and f"interrupted by SIGTERM at step {results['step']}" in stderr
    assert Checkpoints(workdir / "checkpoints", 3).latest_step() == results["step"]
    assert "Traceback" not in stderr

    process = launch_lenet(tmp_path, workdir, "--config.train.num_epochs=500")  # resumes, then two Ctrl-C
    wait_for_training(workdir, process, after_step=results["step"])
    process.send_signal(signal.SIGINT)
    time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert json.loads((workdir / "results.json").read_text())["status"] == "interrupted"


# ----------------------------------------------------------------------------------------------------------------------
# Sweeps killed at random moments (bench/fault_injection.py runs the same with more faults)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.faults
@pytest.mark.parametrize("name", ["sweep-sequential-kill-damaged", "sweep-vectorized-kill"])
def test_a_sweep_killed_at_random_moments_ends_with_the_uninterrupted_table(tmp_path, name):
    from bench import fault_injection

    data = fault_injection.make_data(tmp_path, n_train=120)
    row = fault_injection.run_scenario(name, data, faults=3, rng=np.random.default_rng(0))
    assert row["equal"], row
    assert any(f["exit_code"] == -signal.SIGKILL for f in row["faults"]), row  # at least one fault hit a running sweep
