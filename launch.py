"""cnnjax's launcher.

    python launch.py --experiment=NAME [--config.SECTION.KEY=VALUE ...] [--workdir=DIR] [--summary]

Runs ``experiments/NAME.py:get_config()`` through ``cnnjax.train.train_and_evaluate``. Re-running with the same
``--workdir`` resumes from its latest checkpoint.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

EXPERIMENTS = Path(__file__).resolve().parent / "experiments"

flags.DEFINE_string("experiment", None, "the experiment to run: experiments/<NAME>.py")
flags.DEFINE_string("workdir", None, "run directory (default runs/<experiment>/<timestamp>); an existing one resumes")
flags.DEFINE_bool("summary", False, "print the model's layer table (shapes, parameters, connections, FLOPs) and exit")
flags.DEFINE_string("coordinator_address", None, "multi-process runs: host:port of process 0 (jax.distributed)")
flags.DEFINE_integer("num_processes", 1, "multi-process runs: how many processes take part")
flags.DEFINE_integer("process_id", 0, "multi-process runs: this process's index, 0 .. num_processes - 1")
FLAGS = flags.FLAGS


def available_experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.py") if not p.stem.startswith("_"))


def flag_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in argv, read before absl parses the flags."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def load_config(argv: list[str]):
    """The experiment's config, after checking that the experiment and every --config.KEY override exist."""
    from cnnjax.config import closest_keys, flat_keys

    name = flag_value(argv, "experiment")
    if name not in available_experiments():
        sys.exit(f"{'--experiment is required' if name is None else f'unknown experiment {name!r}'}; "
                 f"available: {', '.join(available_experiments())}")  # fmt: skip
    config = importlib.import_module(f"experiments.{name}").get_config()
    known = set(flat_keys(config))
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config.") :].split("=", 1)[0]
            if key not in known:
                sys.exit(f"unknown config key {key!r}; closest keys: {', '.join(closest_keys(key, config))}")
    return config


def main(argv):
    del argv
    import tensorflow_datasets as tfds

    from cnnjax import models, summary, train

    logging.set_verbosity(logging.WARNING)
    tfds.disable_progress_bar()

    config = FLAGS.config
    if FLAGS.coordinator_address:
        from cnnjax import parallel

        parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if FLAGS.summary:
        shape = train.expected_image_shape(config.data)
        if shape is None:
            sys.exit(f"--summary needs the input shape of data.name={config.data.name!r}, which is not known offline")
        model = models.get(config.model.name, **{k: v for k, v in config.model.items() if k != "name"})
        print(summary.format_summary(summary.summarize(model, shape)))
        return
    workdir = FLAGS.workdir or str(Path("runs") / FLAGS.experiment / time.strftime("%Y%m%d-%H%M%S"))
    try:
        train.train_and_evaluate(config, workdir)
    except (train.TrainingDiverged, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    config_flags.DEFINE_config_dict("config", load_config(sys.argv), lock_config=True)
    app.run(main)
