"""cnnjax's launcher.

    python launch.py --experiment=NAME [--config.SECTION.KEY=VALUE ...] [--workdir=DIR] [--summary]
    python launch.py --experiment=NAME --sweep[=SWEEP] [--sweep_executor=auto|vectorized|sequential] [--sweep_trial=N]
    python launch.py --experiment=NAME --sweep[=SWEEP] --study_storage=URL   # one Optuna worker; start several
    python launch.py --workdir=RUN --predict=PATH [--predict=PATH ...] [--predict_out=DIR]   # classify images
    python launch.py --workdir=RUN --export=DIR   # DIR/model.jax (jax.export) and DIR/model.json
    python launch.py --experiment=NAME --lr_find   # a learning-rate range test: lr_find.png and a suggested rate
    python launch.py --experiment=NAME --dry_run   # one training and one evaluation step, then exit

Runs ``experiments/NAME.py:get_config()`` through ``cnnjax.train.train_and_evaluate``, or its sweep (``sweeps()``)
through ``cnnjax.sweep``. Re-running with the same ``--workdir`` resumes a run or a sweep.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

EXPERIMENTS = Path(__file__).resolve().parent / "experiments"


def available_experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.py") if not p.stem.startswith("_"))


flags.DEFINE_string(
    "experiment",
    None,
    "the experiment to run, experiments/<NAME>.py: " + ", ".join(available_experiments()),
)
flags.DEFINE_string("workdir", None, "run directory (default runs/<experiment>/<timestamp>); an existing one resumes")
flags.DEFINE_enum("lr_find", None, ["auto", "sequential", "vectorized"], "run a learning-rate range test instead "
                  "of training (a bare --lr_find: auto, which vectorizes where a sweep would): lr_find.png and "
                  ".json in --workdir, and a suggested rate")  # fmt: skip
flags.DEFINE_bool("dry_run", False, "one training and one evaluation step on the real data and shapes, then exit "
                  "(writes nothing)")  # fmt: skip
flags.DEFINE_bool("summary", False, "print the model's layer table (shapes, parameters, connections, FLOPs) and exit")
flags.DEFINE_bool(
    "visualize",
    False,
    "after training (or for the finished run in --workdir), draw filters, feature "
    "maps, the confusion matrix and misclassified examples into the run directory",
)
flags.DEFINE_integer("visualize_image", 0, "the test image whose feature maps --visualize draws")
flags.DEFINE_multi_string("predict", None, "classify these image files, folders or glob patterns with the trained run "
                          "in --workdir (its best checkpoint); repeatable")  # fmt: skip
flags.DEFINE_string("predict_out", None, "where --predict writes predictions.csv (default: the run directory)")
flags.DEFINE_string("export", None, "export the trained run in --workdir to this directory: model.jax (a serialized "
                    "jax.export program, uint8 images -> class probabilities) and model.json")  # fmt: skip
flags.DEFINE_bool("export_onnx", False, "--export also writes model.onnx (needs pip install 'cnnjax[onnx]')")
flags.DEFINE_string("sweep", None, "run the experiment's sweep of this name ('default': its first)")
flags.DEFINE_enum(
    "sweep_executor",
    "auto",
    ["auto", "sequential", "vectorized"],
    "how a sweep's trials run locally (vectorized: one vmapped program per group of trials that differ only in "
    "optimizer values; auto: vectorized on accelerators, and on the CPU for batches of at most 32 "
    "(cnnjax.sweep.CPU_VECTORIZED_MAX_BATCH), where it measured faster)",
)
flags.DEFINE_integer("sweep_trial", None, "run only this trial index of the sweep")
flags.DEFINE_string("study_storage", None, "Optuna storage shared by sweep workers: a journal file path or a "
                    "postgresql:// URL; each launch is one worker")  # fmt: skip
flags.DEFINE_string("coordinator_address", None, "multi-process runs: host:port of process 0 (jax.distributed)")
flags.DEFINE_integer("num_processes", 1, "multi-process runs: how many processes take part")
flags.DEFINE_integer("process_id", 0, "multi-process runs: this process's index, 0 .. num_processes - 1")
FLAGS = flags.FLAGS
HELP_FLAGS = {"--help", "-h", "-?", "--helpshort", "--helpfull"}


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
    from cnnjax.config import base_config, closest_keys, flat_keys

    name = flag_value(argv, "experiment")
    uses_a_run = any(arg.startswith(("--predict", "--export")) for arg in argv)
    if name is None and (HELP_FLAGS.intersection(argv) or uses_a_run):
        return base_config()  # for the flags' help and for using a trained run: every config has these keys
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
    from cnnjax import backend, models, summary, train

    backend.enable_compilation_cache()  # a second run of an experiment does not compile its steps again
    logging.set_verbosity(logging.WARNING)

    from cnnjax import parallel

    if FLAGS.predict or FLAGS.export:
        try:
            use_trained_run()
        except ValueError as error:
            sys.exit(f"error: {error}")
        return
    config = FLAGS.config
    if FLAGS.coordinator_address:
        parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    parallel.split_cpu(config.train.cpu_devices)  # before JAX's first operation
    if FLAGS.summary:
        shape = train.expected_image_shape(config.data)  # image folders: with data.image_size and data.channels
        if shape is None:
            known = ("; set --config.data.image_size and --config.data.channels" if config.data.name == "image_folder"
                     else ", which is not known offline")  # fmt: skip
            sys.exit(f"--summary needs the input shape of data.name={config.data.name!r}{known}")
        try:
            model = models.get(config.model.name, **{k: v for k, v in config.model.items() if k != "name"})
            print(summary.format_summary(summary.summarize(model, shape)))
        except ValueError as error:  # a model field that cannot work: one line naming it
            sys.exit(f"error: {error}")
        if config.train.freeze:
            params = models.abstract_init(model, shape)["params"]
            try:
                trainable = train.trainable_params(params, config.train.freeze)
            except ValueError as error:
                sys.exit(f"error: {error}")
            print(f"with train.freeze={config.train.freeze!r}: {trainable:,} of {train.count_params(params):,} "
                  "parameters train")  # fmt: skip
        return
    from cnnjax import preemption

    try:
        if FLAGS.lr_find:
            from cnnjax import lr_find

            workdir = FLAGS.workdir or str(Path("runs") / FLAGS.experiment / time.strftime("lr_find-%Y%m%d-%H%M%S"))
            result = lr_find.lr_find(config, workdir, way=FLAGS.lr_find)
            suggested = result["suggested_learning_rate"]
            print(f"learning-rate range test ({result['way']}, {len(result['rates'])} rates): suggested "
                  f"--config.optim.learning_rate={suggested:.3g}; figure {result['figure']}" if suggested else
                  f"learning-rate range test ({result['way']}): no suggestion (the loss did not fall); figure "
                  f"{result['figure']}")  # fmt: skip
            return
        if FLAGS.dry_run:
            result = train.dry_run(config)
            print(f"dry run: one step on {'x'.join(map(str, result['image_shape']))} images, training loss "
                  f"{result['train_loss']:.4f}, evaluation loss {result['eval_loss']:.4f}; compiled and ran in "
                  f"{result['compile_and_step_s']:.1f} s ({result['steps_per_epoch']} steps per epoch)")  # fmt: skip
            return
        if FLAGS.sweep:
            run_sweep(config)
        else:
            workdir = FLAGS.workdir or str(Path("runs") / FLAGS.experiment / time.strftime("%Y%m%d-%H%M%S"))
            train.train_and_evaluate(config, workdir)
            if FLAGS.visualize:
                from cnnjax import visualize

                for name, path in visualize.visualize(config, workdir, FLAGS.visualize_image).items():
                    print(f"{name}: {path}")
    except (train.TrainingDiverged, ValueError) as error:
        sys.exit(f"error: {error}")
    except preemption.Interrupted as error:
        print(error, file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)


def use_trained_run() -> None:
    """--predict: one line per image with its likeliest classes, and predictions.csv; --export: model.jax/json."""
    import csv

    import cnnjax
    from cnnjax import inference

    if not FLAGS.workdir:
        raise ValueError("--predict and --export use a trained run: name its directory with --workdir=RUN")
    paths = inference.expand_paths(FLAGS.predict) if FLAGS.predict else []  # before loading anything
    predictor = cnnjax.load(FLAGS.workdir)
    if paths:
        probabilities, classes = predictor.top_k([str(p) for p in paths], k=5)
        out = Path(FLAGS.predict_out or FLAGS.workdir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "predictions.csv", "w", newline="") as file:
            table = csv.writer(file)
            table.writerow(["path", "class", "probability", "top5"])
            for path, p, k in zip(paths, probabilities, classes):
                names = [predictor.class_names[i] for i in k]
                top = ", ".join(f"{name} {100 * q:.1f}%" for name, q in zip(names[:3], p[:3]))
                print(f"{path}: {top}")
                table.writerow([path, names[0], f"{p[0]:.6f}", " ".join(f"{n}:{q:.6f}" for n, q in zip(names, p))])
        print(f"{len(paths)} predictions in {out / 'predictions.csv'}")
    if FLAGS.export:
        description = predictor.export(FLAGS.export, onnx=FLAGS.export_onnx)
        sizes = ", ".join(f"{name} {(Path(FLAGS.export) / name).stat().st_size / 1e6:.2f} MB"
                          for name in description["files"])  # fmt: skip
        print(f"exported {predictor.source} to {FLAGS.export}: {sizes} (model.jax for "
              f"{', '.join(description['platforms'])}) and model.json")  # fmt: skip


def run_sweep(config) -> None:
    """Runs the experiment's sweep named by --sweep, prints its table and the best trial's command."""
    from cnnjax import sweep

    module = importlib.import_module(f"experiments.{FLAGS.experiment}")
    sweeps = module.sweeps() if hasattr(module, "sweeps") else {}
    name = next(iter(sweeps), None) if FLAGS.sweep == "default" else FLAGS.sweep
    if name not in sweeps:
        sys.exit(
            f"experiment {FLAGS.experiment!r} has no sweep {FLAGS.sweep!r}; its sweeps: {', '.join(sweeps) or 'none'}"
        )
    points = sweeps[name]
    sweep_dir = Path(FLAGS.workdir or Path("runs") / FLAGS.experiment / f"sweep-{name}")
    if FLAGS.study_storage:
        from cnnjax import study

        rows = study.run_worker(config, points, sweep_dir, FLAGS.study_storage, study_name=f"{FLAGS.experiment}-{name}")
    else:
        rows = sweep.run_sweep(config, points, sweep_dir, executor=FLAGS.sweep_executor, only=FLAGS.sweep_trial)
    print((sweep_dir / "results.md").read_text())
    best = next((r for r in rows if r["status"] == "done"), None)
    if best is not None and isinstance(points, list):
        point = points[int(best["trial"].split("_")[1])]
        overrides = [arg for arg in sys.argv[1:] if arg.startswith("--config.")]
        print(f"best trial {best['trial']}: {sweep.best_command(FLAGS.experiment, point, overrides)}")


if __name__ == "__main__":
    bare = {"--sweep": "--sweep=default", "--lr_find": "--lr_find=auto"}  # a bare --sweep: the default sweep
    argv = [bare.get(arg, arg) for arg in sys.argv]
    config_flags.DEFINE_config_dict("config", load_config(argv), lock_config=True)
    app.run(main, argv=argv)
