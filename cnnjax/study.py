"""Sweeps spread over processes and machines with an Optuna study as the shared queue and record.

Each ``launch.py --sweep --study_storage=...`` process is one worker: it asks the study for a trial, trains it in its
trial directory (a complete run directory, resumable from its checkpoints), tells the study the validation
accuracy, and repeats until the sweep is done. Storage: a journal file (``JournalStorage``) for workers on one
machine, or a PostgreSQL URL (``RDBStorage``) for workers on many; never SQLite for parallel workers.

- Grid sweeps (a list of points): every point is enqueued as a trial with its index; a point another worker
  already finished or is running is not run twice.
- Searches (:class:`Search`): any Optuna sampler (TPE, random) over distributions, with median or Hyperband pruning
  on the validation accuracy reported after each epoch.
- A worker killed mid-trial leaves its trial to be retried by another worker: with PostgreSQL through Optuna's
  heartbeat (the stale trial fails and ``RetryHeartbeatStaleTrialCallback`` enqueues it again); with a journal file, a
  worker that finds a running trial whose process on this machine is gone does the same.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from cnnjax import metrics, sweep, train

SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
PRUNERS = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}


@dataclasses.dataclass(frozen=True)
class Search:
    """A non-grid search: ``num_trials`` draws from ``space`` (dotted key -> sweep.Distribution) by ``sampler``,
    pruned by ``pruner`` on the per-epoch validation accuracy."""

    space: dict
    num_trials: int
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0


def storage_for(url: str):
    """A PostgreSQL ``RDBStorage`` with heartbeats and retries, or a ``JournalStorage`` on a file path."""
    if url.startswith(("postgresql://", "postgresql+psycopg://")):
        for attempt in range(5):  # workers starting together race to create Optuna's tables; the losers retry
            try:
                return RDBStorage(
                    url,
                    heartbeat_interval=5,
                    grace_period=20,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                )
            except Exception:  # noqa: BLE001 - sqlalchemy/alembic errors of the lost race
                if attempt == 4:
                    raise
                time.sleep(1 + attempt)
    if "://" in url:
        raise ValueError(f"--study_storage={url!r}: use a journal file path or a postgresql:// URL (not SQLite)")
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(url))


def _retry_orphans(study: optuna.Study) -> None:
    """Journal storage: running trials whose worker process on this machine is gone are failed and enqueued again."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, host = trial.user_attrs.get("pid"), trial.user_attrs.get("host")
        if host == socket.gethostname() and pid is not None and not _alive(pid):
            try:
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except RuntimeError:  # another worker failed it first and enqueued the retry
                continue
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            metrics.log_line(f"trial {trial.number} lost its worker (pid {pid}); enqueued again")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_worker(base, points, sweep_dir: Path, storage_url: str, *, study_name: str) -> list[dict]:
    """One worker of a distributed sweep; returns the sweep table (of the trials finished so far, by any worker)."""
    storage = storage_for(storage_url)
    sweep_dir = Path(sweep_dir)
    if isinstance(points, Search):
        return _search(base, points, sweep_dir, storage, study_name)
    configs = [sweep.trial_config(base, p) for p in points]
    for config in configs:
        train.check_config(config)
    dirs = sweep.trial_dirs(sweep_dir, points)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize", load_if_exists=True)
    everything = set(range(len(points)))
    while True:
        if isinstance(storage, JournalStorage):
            _retry_orphans(study)
        done, running, waiting = _grid_progress(study)
        if not everything - done - running and not waiting:
            if not running:
                break
            time.sleep(2)  # the last points run elsewhere: wait, in case their worker dies and they come back
            continue
        if not waiting:  # queue the grid points nobody has finished or is running (duplicates are pruned below)
            for index in sorted(everything - done - running):
                study.enqueue_trial({"trial_index": index})
        trial = study.ask()
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        index = trial.suggest_categorical("trial_index", list(range(len(points))))
        if _taken_by_another(study, trial, index):
            study.tell(trial, state=TrialState.PRUNED)
            continue
        try:
            result = sweep.run_trial(configs[index], dirs[index])
        except BaseException:  # interrupted (or the disk is full): any worker, or this one re-run, resumes it
            study.tell(trial, state=TrialState.FAIL)
            raise
        if result["status"] == "failed":
            trial.set_user_attr("recorded_failure", result.get("error", ""))
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, result.get("val_accuracy") or 0.0)
    return sweep.write_report(sweep_dir, points, dirs)


def _grid_progress(study: optuna.Study) -> tuple[set, set, int]:
    """(grid indices finished, indices running, number of trials waiting to be retried). A trial that failed by
    itself counts as finished (its error is recorded); one failed by a lost worker is retried."""
    done, running, waiting = set(), set(), 0
    for t in study.get_trials(deepcopy=False):
        index = t.params.get("trial_index")
        if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "recorded_failure" in t.user_attrs):
            done.add(index)
        elif t.state == TrialState.RUNNING and index is not None:
            running.add(index)
        elif t.state == TrialState.WAITING:
            waiting += 1
    return done, running, waiting


def _taken_by_another(study: optuna.Study, trial, index: int) -> bool:
    """Whether another trial of the study already finished or is running grid point ``index``."""
    return any(
        t.number != trial.number and t.params.get("trial_index") == index
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    )


def _suggest(trial, key: str, distribution: sweep.Distribution):
    if distribution.kind == "choice":
        return trial.suggest_categorical(key, list(distribution.args))
    return trial.suggest_float(key, *distribution.args, log=distribution.kind == "log_uniform")


def _search(base, search: Search, sweep_dir: Path, storage, study_name: str) -> list[dict]:
    """A sampler-driven search with pruning; trial directories are named by the study's trial number."""
    study = optuna.create_study(
        study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=SAMPLERS[search.sampler](seed=search.seed), pruner=PRUNERS[search.pruner](),
    )  # fmt: skip
    if isinstance(storage, JournalStorage):
        _retry_orphans(study)
    points, dirs = [], []
    while len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))) < search.num_trials:
        trial = study.ask()
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        point = {key: _suggest(trial, key, d) for key, d in search.space.items()}
        trial_dir = sweep_dir / sweep.trial_name(trial.number, point)

        def report(epoch: int, val_accuracy: float, trial=trial) -> None:
            trial.report(val_accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            result = train.train_and_evaluate(sweep.trial_config(base, point), trial_dir, epoch_callback=report)
            study.tell(trial, result["val_accuracy"] or 0.0)
        except optuna.TrialPruned:
            metrics.write_json(trial_dir / "results.json", {"status": "pruned"})
            study.tell(trial, state=TrialState.PRUNED)
        except BaseException:  # diverged, interrupted, or the disk is full
            study.tell(trial, state=TrialState.FAIL)
            if not isinstance(sys.exc_info()[1], train.TrainingDiverged):
                raise
    for trial in study.get_trials(deepcopy=False):
        point = {k: v for k, v in trial.params.items()}
        points.append(point)
        dirs.append(sweep_dir / sweep.trial_name(trial.number, point))
    return sweep.write_report(sweep_dir, points, dirs)
