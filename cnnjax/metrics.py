"""Metric writers (JSONL, and loggers: TensorBoard, Weights & Biases, MLflow), atomic files, the progress bar.

``metrics.jsonl`` holds one JSON record per line, each with ``kind`` ('train', 'epoch' or 'test') and ``step``. On a
resume from the checkpoint at step S the file is cut back to the records of steps <= S but the test record (a run
killed after its test and before its results), and a half-written last line is dropped, so a resumed run's log
equals an uninterrupted run's. Timing fields (``TIMING_KEYS``) are the only
ones that differ between runs. A write that fails (a full disk) leaves the file as it was before that record, and
raises a one-line ``rundir.RunDirectoryError``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import jax
from tqdm.auto import tqdm

from cnnjax import rundir

TIMING_KEYS = ("images_per_sec", "elapsed_s")


def write_text(path: str | Path, text: str) -> None:
    """Writes ``text`` atomically: a reader or a crash never sees a half-written file, and a failed write (a full
    disk) leaves the previous file intact and raises a one-line ``rundir.RunDirectoryError``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise rundir.write_error(error, path, path.name, len(text), f"the previous {path.name} is intact") from None


def write_json(path: str | Path, data: dict) -> None:
    """Writes ``data`` as JSON with :func:`write_text`."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_records(path: str | Path) -> list[dict]:
    """The complete records of a metrics.jsonl file (a torn last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def _pixels(figure):
    """A ``matplotlib.figure.Figure`` as uint8 RGB pixels (H, W, 3), rendered with Agg, without pyplot."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def _scalars(record: dict) -> dict:
    """The numeric fields of a record, named '<kind>/<field>'."""
    skip = ("kind", "step", "epoch")
    return {f"{record['kind']}/{k}": v for k, v in record.items() if k not in skip and isinstance(v, (int, float))}


def summary_writer_class() -> type:
    """tensorboardX's ``SummaryWriter``, imported without PyTorch where the process has not imported it: tensorboardX
    imports an installed torch only to annotate its argument types (2-4 s of start-up on a 2-core CPU), and cnnjax
    passes it NumPy arrays and floats."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class TensorBoardLogger:
    """Scalars, images and hyperparameters as TensorBoard event files in ``workdir/tensorboard``."""

    def __init__(self, workdir: Path, resume_step: int, run_name: str):
        self.writer = summary_writer_class()(str(workdir / "tensorboard"), purge_step=resume_step + 1)

    def scalars(self, values: dict, step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, pixels, step: int) -> None:
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def hyperparameters(self, values: dict, results: dict) -> None:
        self.writer.add_hparams(values, results, name="hparams")

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """Weights & Biases (``pip install 'cnnjax[wandb]'``): one W&B run per run directory, resumed with it; offline
    with ``WANDB_MODE=offline`` (synced later by ``wandb sync``)."""

    def __init__(self, workdir: Path, resume_step: int, run_name: str):
        import wandb

        run_id = re.sub(r"[^A-Za-z0-9_-]", "-", run_name)[-60:]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "cnnjax"), id=run_id, name=run_name,
                              dir=str(workdir), resume="allow", reinit="create_new")  # fmt: skip
        self.wandb = wandb

    def scalars(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def image(self, tag: str, pixels, step: int) -> None:
        self.run.log({tag: self.wandb.Image(pixels)}, step=step)

    def hyperparameters(self, values: dict, results: dict) -> None:
        self.run.config.update(values, allow_val_change=True)
        self.run.summary.update(results)

    def close(self) -> None:
        self.run.finish()


class MLflowLogger:
    """MLflow (``pip install 'cnnjax[mlflow]'``): one MLflow run per run directory (its id kept in
    ``mlflow_run_id``), in ``MLFLOW_TRACKING_URI`` (default: the SQLite store ``<workdir>/mlflow.db`` with the
    artifacts in ``<workdir>/mlruns``, MLflow's own default kind of store; a server's URL or a ``file:`` store work
    the same, with their own artifact locations)."""

    def __init__(self, workdir: Path, resume_step: int, run_name: str):
        import mlflow

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None if uri else (workdir / "mlruns").absolute().as_uri()  # not MLflow's ./mlruns of the cwd
        self.client = mlflow.MlflowClient(uri or f"sqlite:///{(workdir / 'mlflow.db').absolute()}")
        id_path = workdir / "mlflow_run_id"
        if id_path.exists():
            self.run_id = id_path.read_text().strip()
        else:
            experiment = self.client.get_experiment_by_name("cnnjax")
            experiment_id = (
                experiment.experiment_id
                if experiment
                else self.client.create_experiment("cnnjax", artifact_location=artifacts)
            )
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            write_text(id_path, self.run_id + "\n")

    def scalars(self, values: dict, step: int) -> None:
        for tag, value in values.items():
            self.client.log_metric(self.run_id, tag.replace("/", "."), float(value), step=step)

    def image(self, tag: str, pixels, step: int) -> None:
        self.client.log_image(self.run_id, pixels, artifact_file=f"{tag.replace('/', '_')}_{step}.png")

    def hyperparameters(self, values: dict, results: dict) -> None:
        for key, value in values.items():
            self.client.log_param(self.run_id, key, str(value)[:500])
        for key, value in results.items():
            self.client.log_metric(self.run_id, f"final.{key}", float(value))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


LOGGERS = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger, "mlflow": MLflowLogger}
EXTRAS = {"wandb": "wandb", "mlflow": "mlflow"}


def logger_names(spec: str) -> list[str]:
    """The loggers of ``train.loggers`` ('tensorboard,wandb'); raises a ValueError naming an unknown one or a
    missing extra."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    for name in names:
        if name not in LOGGERS:
            raise ValueError(
                f"config.train.loggers={spec!r}: unknown logger {name!r}; choose from {', '.join(LOGGERS)}"
            )
        if name in EXTRAS and importlib.util.find_spec(EXTRAS[name]) is None:
            raise ValueError(f"config.train.loggers={spec!r} needs {name}: pip install 'cnnjax[{name}]'")
    return names


class MetricsWriter:
    """Appends records to ``workdir/metrics.jsonl`` (the run's own log, which a resume cuts back) and hands their
    scalars, figures and the hyperparameters to the loggers of ``train.loggers`` (TensorBoard by default; W&B,
    MLflow).

    ``resume_step``: the step training restarts from; later records of an interrupted run are discarded.
    """

    def __init__(self, workdir: str | Path, resume_step: int = 0, loggers: str = "tensorboard"):
        workdir = Path(workdir)
        self.path = workdir / "metrics.jsonl"
        # a test record is the last of a finished run: one kept at a resume would be followed by a second one
        kept = [r for r in read_records(self.path) if r["step"] <= resume_step and r["kind"] != "test"]
        tmp = self.path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        os.replace(tmp, self.path)
        self.file = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        name = f"{workdir.parent.name}-{workdir.name}"
        self.loggers = [LOGGERS[n](workdir, resume_step, name) for n in logger_names(loggers)]

    def write(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        end = os.lseek(self.file, 0, os.SEEK_END)
        try:
            written = 0
            while written < len(line):
                written += os.write(self.file, line[written:])
        except OSError as error:
            os.ftruncate(self.file, end)  # no torn record
            raise rundir.write_error(error, self.path, "a record of the metrics log", len(line),
                                     "its earlier records are intact") from None  # fmt: skip
        for logger in self.loggers:
            logger.scalars(_scalars(record), record["step"])

    def figure(self, tag: str, figure, step: int) -> None:
        """A ``matplotlib.figure.Figure`` as an image for every logger."""
        pixels = _pixels(figure)
        for logger in self.loggers:
            logger.image(tag, pixels, step)

    def hyperparameters(self, config: dict, results: dict) -> None:
        """The run's flattened config ('optim.learning_rate': ...) and its final numeric results."""
        flat = {}

        def walk(tree, prefix=""):
            for key, value in tree.items():
                if isinstance(value, dict):
                    walk(value, f"{prefix}{key}.")
                else:
                    flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)

        walk(config)
        final = {k: float(v) for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for logger in self.loggers:
            logger.hyperparameters(flat, final)

    def close(self) -> None:
        os.close(self.file)
        for logger in self.loggers:
            logger.close()


class NullWriter:
    """The writer of processes other than the chief in a multi-process run: records are written once, by process 0."""

    def write(self, record: dict) -> None:
        pass

    def figure(self, tag: str, figure, step: int) -> None:
        pass

    def hyperparameters(self, config: dict, results: dict) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int, description: str, enabled: bool = True) -> tqdm:
    """A progress bar over the steps of one epoch; it disappears when the epoch ends."""
    return tqdm(
        total=total,
        initial=initial,
        desc=description,
        leave=False,
        dynamic_ncols=True,
        unit="step",
        disable=not enabled,
    )


def log_line(text: str) -> None:
    """Prints a line (from process 0 only) without breaking an active progress bar."""
    if jax.process_index() == 0:
        tqdm.write(text)
