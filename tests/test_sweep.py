"""Sweeps: expansion, trial directories and statuses, resume, failure isolation, vectorized groups, Optuna workers."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

import cnnjax
from cnnjax import backend, data, metrics, sweep, train
from tests.fakes import small_config

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


def test_grid_zip_product_and_random_expansion():
    points = sweep.grid(**{"model.filters": [(6, 16), (8, 16)], "model.kernel_size": [3, 5, 7]})
    assert len(points) == 6 and points[0] == {"model.filters": (6, 16), "model.kernel_size": 3}
    assert sweep.zipped(optim__learning_rate=[0.1, 0.2], train__seed=[1, 2]) == [
        {"optim.learning_rate": 0.1, "train.seed": 1}, {"optim.learning_rate": 0.2, "train.seed": 2}]  # fmt: skip
    assert len(sweep.product(points, [{"train.seed": 0}, {"train.seed": 1}])) == 12
    space = dict(optim__learning_rate=sweep.log_uniform(1e-4, 1e-1), optim__momentum=sweep.uniform(0.5, 0.99),
                 model__pool=sweep.choice(["max", "avg"]))  # fmt: skip
    a, b = sweep.random(20, seed=3, **space), sweep.random(20, seed=3, **space)
    assert a == b and a != sweep.random(20, seed=4, **space)
    assert all(1e-4 <= p["optim.learning_rate"] <= 1e-1 and p["model.pool"] in ("max", "avg") for p in a)
    with pytest.raises(ValueError, match="same number of values"):
        sweep.zipped(a=[1, 2], b=[1])
    names = [p.name for p in sweep.trial_dirs(Path("/s"), points)]
    assert len(set(names)) == 6 and names[0] == "trial_000_filters=6-16_kernel_size=3"


def test_unknown_sweep_key_names_the_closest():
    with pytest.raises(ValueError, match="sweep key 'optim.lr' is not a config key; closest: optim.learning_rate"):
        sweep.trial_config(train.config_lib.base_config(), {"optim.lr": 0.1})


def test_sequential_sweep_records_failures_resumes_and_reports(tmp_path, monkeypatch):
    base = small_config(tmp_path, num_epochs=2)
    points = sweep.zipped(**{"optim.learning_rate": [1e-3, 1e12, 2e-3], "model.filters": [(4, 8), (4, 8), (8, 8)]})
    rows = sweep.run_sweep(base, points, tmp_path / "sweep", executor="sequential")
    statuses = {r["trial"]: r["status"] for r in rows}
    assert sorted(statuses.values()) == ["diverged", "done", "done"]
    assert rows[0]["val_accuracy"] >= rows[1]["val_accuracy"] or rows[1]["status"] != "done"
    for name in ("results.csv", "results.md", "heatmap.png", "learning_curves.png"):
        assert (tmp_path / "sweep" / name).stat().st_size > 0
    assert "| trial | learning_rate" not in (tmp_path / "sweep" / "results.md").read_text()  # full keys as columns
    assert "optim.learning_rate" in (tmp_path / "sweep" / "results.md").read_text()
    # interrupt: one finished trial loses its results; re-running trains only that one
    dirs = sweep.trial_dirs(tmp_path / "sweep", points)
    metrics.write_json(dirs[2] / "results.json", {"status": "running"})
    calls = []
    real = train.train_and_evaluate
    monkeypatch.setattr(
        train, "train_and_evaluate", lambda config, workdir, **kw: calls.append(workdir) or real(config, workdir, **kw)
    )
    sweep.run_sweep(base, points, tmp_path / "sweep", executor="sequential")
    assert calls == [dirs[2]]


def test_vectorized_group_equals_solo_runs_and_does_not_recompile(tmp_path):
    base = small_config(tmp_path, num_epochs=2)
    base.train.label_smoothing, base.data.test_time_shift = 0.1, 1  # vmapped too: the smoothed loss, the views
    points = sweep.grid(**{"optim.learning_rate": [1e-3, 3e-3], "train.seed": [0, 1]})
    solo = sweep.run_sweep(base, points, tmp_path / "solo", executor="sequential")
    vectorized = sweep.run_sweep(base, points, tmp_path / "vectorized", executor="vectorized")
    by_trial = {r["trial"]: r for r in solo}
    for row in vectorized:
        assert row["status"] == "done"
        assert row["test_accuracy"] == pytest.approx(by_trial[row["trial"]]["test_accuracy"], abs=1e-6)
        assert row["val_accuracy"] == pytest.approx(by_trial[row["trial"]]["val_accuracy"], abs=1e-6)
    for d in sweep.trial_dirs(tmp_path / "solo", points):
        solo_losses = [r["train_loss"] for r in metrics.read_records(d / "metrics.jsonl") if r["kind"] == "epoch"]
        vec_losses = [r["train_loss"] for r in metrics.read_records(tmp_path / "vectorized" / d.name / "metrics.jsonl")
                      if r["kind"] == "epoch"]  # fmt: skip
        np.testing.assert_allclose(vec_losses, solo_losses, rtol=1e-5)
    member = tmp_path / "vectorized" / sweep.trial_dirs(tmp_path / "solo", points)[1].name
    results, solo_results = (json.loads((d / member.name / "results.json").read_text())
                             for d in (tmp_path / "vectorized", tmp_path / "solo"))  # fmt: skip
    assert results["confusion_matrix"] == solo_results["confusion_matrix"] and results["per_class"]
    test_images, test_labels = data.load("mnist", "test", data_dir=base.data.data_dir, tfds_dir=base.data.tfds_dir)
    predicted = cnnjax.load(member).predict(test_images).argmax(axis=1)  # the member's tested parameters
    assert np.mean(predicted == test_labels) == pytest.approx(results["test_accuracy"], abs=1e-6)
    # other learning rates: the same compiled group step
    more = sweep.grid(**{"optim.learning_rate": [5e-4, 7e-3], "train.seed": [0, 1]})
    cached = sweep._group_steps.cache_info().currsize  # other tests of this process may have added their own
    sweep.run_sweep(base, more, tmp_path / "more", executor="vectorized")
    assert sweep._group_steps.cache_info().currsize == cached
    xla = backend.XlaOptions.of(base.train)
    group_step, _ = sweep._group_steps(*train.compiled_steps(base, train.check_config(base), 6)[1::2], xla)
    assert group_step._cache_size() == 1


def test_auto_executor_vectorizes_where_it_measured_faster(tmp_path):
    assert sweep.vectorizes("auto", 32, "cpu") and not sweep.vectorizes("auto", 64, "cpu")
    assert sweep.vectorizes("auto", 512, "gpu") and sweep.vectorizes("auto", 512, "tpu")
    assert sweep.vectorizes("vectorized", 512, "cpu") and not sweep.vectorizes("sequential", 8, "gpu")
    points = sweep.grid(**{"optim.learning_rate": [1e-3, 3e-3]})
    largest = sweep.CPU_VECTORIZED_MAX_BATCH
    for batch_size in (largest, 2 * largest):  # on the CPU: one group, then two solo trials
        grouped = sweep.vectorizes("auto", batch_size)
        base = small_config(tmp_path, num_epochs=1)
        base.data.batch_size = batch_size
        sweep.run_sweep(base, points, tmp_path / f"batch{batch_size}")
        for trial_dir in sweep.trial_dirs(tmp_path / f"batch{batch_size}", points):
            result = json.loads((trial_dir / "results.json").read_text())
            assert result["status"] == "done" and (result.get("executor") == "vectorized") == grouped


def test_a_group_of_different_seeds_is_refused_before_any_work(tmp_path):
    base = small_config(tmp_path, num_epochs=1)
    configs = [sweep.trial_config(base, {"train.seed": seed}) for seed in (0, 1)]
    with pytest.raises(ValueError, match="differ only in .*group_key"):
        sweep.train_group(configs, [tmp_path / "a", tmp_path / "b"])
    assert not (tmp_path / "a").exists()


def test_a_diverging_member_is_masked_without_disturbing_the_others(tmp_path):
    base = small_config(tmp_path, num_epochs=2)
    solo = sweep.run_sweep(base, [{"optim.learning_rate": 1e-3}], tmp_path / "solo", executor="sequential")[0]
    rows = sweep.run_sweep(base, sweep.grid(**{"optim.learning_rate": [1e-3, 1e12]}), tmp_path / "vec")
    by_lr = {r["optim.learning_rate"]: r for r in rows}
    assert by_lr[1e12]["status"] == "diverged" and by_lr[1e-3]["status"] == "done"
    assert by_lr[1e-3]["test_accuracy"] == pytest.approx(solo["test_accuracy"], abs=1e-6)


def launch_worker(tmp_path, storage, *extra):
    overrides = [f"--config.{k}={v}" for k, v in (
        ("data.name", "mnist"), ("data.data_dir", tmp_path / "src"), ("data.tfds_dir", tmp_path / "tfds"),
        ("data.batch_size", 16), ("data.eval_batch_size", 8), ("train.log_every", 2), ("train.checkpoint_every", 2),
        ("train.num_epochs", 2),
    )]  # fmt: skip
    command = [sys.executable, "launch.py", "--experiment=lenet", "--sweep=optimization",
               f"--workdir={tmp_path / 'sweep'}", f"--study_storage={storage}", *overrides, *extra]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def check_study(storage, tmp_path):
    study = optuna.load_study(study_name="lenet-optimization", storage=storage)
    complete = [t.params["trial_index"] for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
    assert sorted(complete) == list(range(12))  # every grid point exactly once
    rows = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("trial_*/results.json")]
    assert len(rows) == 12 and all(r["status"] == "done" for r in rows)
    assert (tmp_path / "sweep" / "results.md").exists()


def test_two_journal_workers_share_a_study_and_a_killed_worker_is_retried(tmp_path):
    from tests import fakes

    fakes.make_idx_dataset(tmp_path / "src", n_train=120, n_test=30)
    journal = str(tmp_path / "study.journal")
    victim = launch_worker(tmp_path, journal)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "sweep").glob("trial_*/checkpoints/periodic/*")):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    workers = [launch_worker(tmp_path, journal) for _ in range(2)]
    outputs = []
    for worker in workers:
        outputs.append(worker.communicate(timeout=600)[0])
        assert worker.returncode == 0, outputs[-1][-3000:]
    assert any("lost its worker" in output for output in outputs)
    assert any("best trial trial_" in output for output in outputs)
    check_study(optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal)), tmp_path)


@pytest.fixture
def postgres_url():
    """A real PostgreSQL server on loopback in a temporary directory (Debian's postgresql, run as its user)."""
    bindir = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
    if bindir is None:
        pytest.skip("Debian's postgresql is not installed (scripts/setup.sh installs it)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="cnnjax-pg-"))
    home.chmod(0o755)
    if as_postgres:
        shutil.chown(home, "postgres")
    data_dir = home / "data"
    subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data_dir), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*as_postgres, str(bindir / "postgres"), "-D", str(data_dir), "-p", str(port), "-k",
                               str(home), "-h", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 60
        while subprocess.run(
            [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
        ).returncode:
            assert time.time() < deadline, "PostgreSQL did not start"
            time.sleep(0.2)
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "cnnjax"], check=True
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/cnnjax"
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(home, ignore_errors=True)


def test_two_workers_against_a_real_postgresql_server(tmp_path, postgres_url):
    from tests import fakes

    fakes.make_idx_dataset(tmp_path / "src", n_train=120, n_test=30)
    workers = [launch_worker(tmp_path, postgres_url) for _ in range(2)]
    for worker in workers:
        output, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, output[-3000:]
    check_study(optuna.storages.RDBStorage(postgres_url), tmp_path)


def test_optuna_search_with_tpe_and_median_pruning(tmp_path):
    from cnnjax import study

    base = small_config(tmp_path, num_epochs=2)
    search = study.Search(
        space={"optim.learning_rate": sweep.log_uniform(1e-4, 1e-2), "model.pool": sweep.choice(["max", "avg"])},
        num_trials=3,
        sampler="tpe",
        pruner="median",
    )
    journal = str(tmp_path / "search.journal")
    rows = study.run_worker(base, search, tmp_path / "search", journal, study_name="search")
    assert len(rows) == 3 and all(r["status"] in ("done", "pruned") for r in rows)
    assert all(1e-4 <= r["optim.learning_rate"] <= 1e-2 for r in rows)
    loaded = optuna.load_study(study_name="search", storage=study.storage_for(journal))
    assert len(loaded.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))) == 3
    with pytest.raises(ValueError, match="not SQLite"):
        study.storage_for("sqlite:///x.db")
