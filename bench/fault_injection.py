"""Fault injection: runs and sweeps stopped at random moments and re-run must end equal to uninterrupted ones.

    PYTHONPATH=. .venv/bin/python bench/fault_injection.py [--faults=8] [--seed=0] [--train_images=1200]

Each scenario runs ``launch.py`` once without faults, then again in a fresh directory through ``--faults`` faults:
every attempt is stopped by SIGKILL or SIGTERM at a random moment (during start-up, or at a random point of its
progress, see :func:`with_faults`), optionally the newest periodic checkpoint is then damaged on disk, and the next
attempt resumes; the last attempt runs to the end. A scenario holds when the final state (bitwise), the metrics log and the results equal the
uninterrupted run's (for sweeps: the table, and every trial tested exactly once). The lost time is the attempts'
total wall time minus the uninterrupted run's. Data: generated MNIST-format files (the faults, not the data, are
under test). Writes ``bench/results/fault_injection-<cpu>.json``.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging

from cnnjax import metrics
from tests.fakes import comparable, final_state, make_idx_dataset

ROOT = Path(__file__).resolve().parents[1]
SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM}
SIGNAL_NAMES = {"kill": "SIGKILL", "term": "SIGTERM"}


def lenet_command(data: Path, workdir: Path, *extra: str) -> list[str]:
    """``launch.py --experiment=lenet`` on the generated data in ``data`` (src/ and tfds/)."""
    overrides = [f"--config.{k}={v}" for k, v in (
        ("data.name", "mnist"), ("data.data_dir", data / "src"), ("data.tfds_dir", data / "tfds"),
        ("data.batch_size", 16), ("data.validation_fraction", 0.2), ("train.log_every", 2),
        ("train.checkpoint_every", 4),
    )]  # fmt: skip
    return [sys.executable, "launch.py", "--experiment=lenet", f"--workdir={workdir}", *overrides, *extra]


def make_data(directory: Path, n_train: int) -> Path:
    make_idx_dataset(directory / "src", n_train=n_train, n_test=40)
    return directory


def run(command: list[str]) -> float:
    """Runs ``command`` to the end; returns its wall time."""
    started = time.time()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.time() - started


def newest_checkpoints(workdir: Path, damaged_before: dict) -> list[Path]:
    """The newest periodic checkpoint of every unfinished run directory under ``workdir`` (a run, or a sweep's
    trials) that has an older one to fall back to, where it is newer than any damaged before (``damaged_before``:
    periodic dir -> step): damage that reached every checkpoint of a run would stop it with an error, as it should
    (tests/test_faults.py checks that), instead of testing the fallback."""
    newest = []
    for periodic in workdir.rglob("checkpoints/periodic"):
        if json.loads((periodic.parents[1] / "results.json").read_text()).get("status") == "done":
            continue
        steps = sorted((int(p.name) for p in periodic.iterdir() if p.name.isdigit()))
        if len(steps) >= 2 and steps[-1] > damaged_before.get(periodic, -1):
            damaged_before[periodic] = steps[-1]
            newest.append(periodic / str(steps[-1]))
    return newest


def damage(step_dir: Path) -> None:
    """Overwrites a checkpoint's array files with random bytes, as a bad sector or a cut copy would."""
    for path in step_dir.glob("state/**/d/*"):
        path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


def progress(workdir: Path) -> int:
    """How far a run or sweep has come: the records in its metrics logs (not searched recursively: checkpoints
    appear and vanish beside them)."""
    logs = [workdir / "metrics.jsonl", *workdir.glob("trial_*/metrics.jsonl")]
    return sum(len(metrics.read_records(path)) for path in logs)


def with_faults(command: list[str], workdir: Path, faults: int, kind: str, total: int, rng,
                damaged: bool = False) -> dict:  # fmt: skip
    """Runs ``command`` through ``faults`` faults of ``kind`` ('kill' or 'term'), then to the end. A quarter of the
    faults strike during start-up (0-5 s after the launch: imports, data, compilation, restoring); the others once
    the run has logged a random share (5-95%, in increasing order) of the ``total`` records of an uninterrupted
    run, plus up to 0.3 s. With ``damaged``, the newest checkpoint of each unfinished run is then damaged. Returns
    {'faults': [{when, exit_code, damaged}], 'wall_s': all attempts together}."""
    targets = np.sort(rng.uniform(0.05, 0.95, faults)) * total
    records, started, damaged_before = [], time.time(), {}
    for target in targets:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if rng.uniform() < 0.25:
            delay = rng.uniform(0, 5)
            when = f"start-up + {delay:.1f} s"
            time.sleep(delay)
        else:
            when = f"{100 * target / total:.0f}% of the records"
            while process.poll() is None and progress(workdir) < target:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.3))
        if process.poll() is None:
            process.send_signal(SIGNALS[kind])
        process.wait(timeout=60)
        hit = newest_checkpoints(workdir, damaged_before) if damaged and process.returncode != 0 else []
        for step_dir in hit:
            damage(step_dir)
        records.append({"when": when, "exit_code": process.returncode, "damaged": len(hit)})
    run(command)
    return {"faults": records, "wall_s": time.time() - started}


def run_matches(whole: Path, faulted: Path) -> bool:
    """Whether a faulted run ended equal to the uninterrupted one: final state bitwise, metrics log, results."""
    (step_a, state_a, _), (step_b, state_b, _) = final_state(whole), final_state(faulted)
    same_state = step_a == step_b and all(
        np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(state_a), jax.tree_util.tree_leaves(state_b))
    )
    same_log = comparable(metrics.read_records(whole / "metrics.jsonl")) == comparable(
        metrics.read_records(faulted / "metrics.jsonl")
    )
    results = [json.loads((d / "results.json").read_text()) for d in (whole, faulted)]
    return same_state and same_log and results[0]["test_accuracy"] == results[1]["test_accuracy"]


def sweep_table(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "results.csv") as file:
        return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(file)]


def sweep_matches(whole: Path, faulted: Path) -> bool:
    """Whether a faulted sweep ended with the uninterrupted one's table and logs, every trial tested once."""
    trials = sorted(p.name for p in whole.glob("trial_*"))
    tested_once = all(
        sum(r["kind"] == "test" for r in metrics.read_records(faulted / t / "metrics.jsonl")) == 1 for t in trials
    )
    same_logs = all(
        comparable(metrics.read_records(whole / t / "metrics.jsonl"))
        == comparable(metrics.read_records(faulted / t / "metrics.jsonl"))
        for t in trials
    )
    return sweep_table(whole) == sweep_table(faulted) and tested_once and same_logs


def scenario(name: str, command, matches, directory: Path, faults: int, kind: str, rng, damaged=False) -> dict:
    """One scenario: the uninterrupted run, the faulted one, and whether they ended equal."""
    whole_s = run(command(directory / f"{name}-whole"))
    total = progress(directory / f"{name}-whole")
    faulted = with_faults(command(directory / f"{name}-faulted"), directory / f"{name}-faulted", faults, kind,
                          total, rng, damaged)  # fmt: skip
    equal = matches(directory / f"{name}-whole", directory / f"{name}-faulted")
    hits = sum(f["exit_code"] != 0 for f in faulted["faults"])
    return {
        "scenario": name, "fault": SIGNAL_NAMES[kind] + (" + damaged checkpoint" if damaged else ""),
        "injected": hits, "damaged": sum(f["damaged"] for f in faulted["faults"]), "equal": equal,
        "uninterrupted_s": round(whole_s, 1), "faulted_total_s": round(faulted["wall_s"], 1),
        "lost_s_per_fault": round((faulted["wall_s"] - whole_s) / max(hits, 1), 1), "faults": faulted["faults"],
    }  # fmt: skip


SCENARIOS = {
    "lenet-kill": ("run", "kill", False),
    "lenet-sigterm": ("run", "term", False),
    "lenet-kill-damaged": ("run", "kill", True),
    "sweep-sequential-kill": ("sequential", "kill", False),
    "sweep-vectorized-kill": ("vectorized", "kill", False),
    "sweep-sequential-kill-damaged": ("sequential", "kill", True),
}


def run_scenario(name: str, directory: Path, faults: int, rng) -> dict:
    what, kind, damaged = SCENARIOS[name]
    if what == "run":
        command = lambda workdir: lenet_command(directory, workdir, "--config.train.num_epochs=3")  # noqa: E731
        return scenario(name, command, run_matches, directory, faults, kind, rng, damaged)
    command = lambda workdir: lenet_command(  # noqa: E731
        directory, workdir, "--sweep=optimization", f"--sweep_executor={what}", "--config.train.num_epochs=2"
    )
    return scenario(name, command, sweep_matches, directory, faults, kind, rng, damaged)


FLAGS = flags.FLAGS
flags.DEFINE_integer("faults", 8, "faults injected per scenario")
flags.DEFINE_integer("seed", 0, "seed of the random moments")
flags.DEFINE_integer("train_images", 1200, "generated training images")


def main(argv):
    del argv
    from bench.workloads import write_result

    logging.set_verbosity(logging.WARNING)
    rng = np.random.default_rng(FLAGS.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_data(Path(tmp), FLAGS.train_images)
        for name in SCENARIOS:
            rows.append(run_scenario(name, directory, FLAGS.faults, rng))
            row = rows[-1]
            print(f"{name:32} {row['injected']} faults, equal: {row['equal']}, uninterrupted {row['uninterrupted_s']} s,"
                  f" {row['lost_s_per_fault']} s lost per fault", flush=True)  # fmt: skip
    path = write_result("fault_injection", {"train_images": FLAGS.train_images, "seed": FLAGS.seed, "scenarios": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
