"""Metric writers (JSONL and TensorBoard), atomic JSON files, and the progress bar.

``metrics.jsonl`` holds one JSON record per line, each with ``kind`` ('train', 'epoch' or 'test') and ``step``. On a
resume from the checkpoint at step S the file is cut back to the records of steps <= S but the test record (a run
killed after its test and before its results), and a half-written last line is dropped, so a resumed run's log
equals an uninterrupted run's. Timing fields (``TIMING_KEYS``) are the only
ones that differ between runs. A write that fails (a full disk) leaves the file as it was before that record, and
raises a one-line ``rundir.RunDirectoryError``.
"""

from __future__ import annotations

import json
import os
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


class MetricsWriter:
    """Appends records to ``workdir/metrics.jsonl`` and scalars to TensorBoard event files in ``workdir/tensorboard``.

    ``resume_step``: the step training restarts from; later records of an interrupted run are discarded.
    """

    def __init__(self, workdir: str | Path, resume_step: int = 0):
        from tensorboardX import SummaryWriter

        self.path = Path(workdir) / "metrics.jsonl"
        # a test record is the last of a finished run: one kept at a resume would be followed by a second one
        kept = [r for r in read_records(self.path) if r["step"] <= resume_step and r["kind"] != "test"]
        tmp = self.path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        os.replace(tmp, self.path)
        self.file = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.tensorboard = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=resume_step + 1)

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
        for key, value in record.items():
            if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)):
                self.tensorboard.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def figure(self, tag: str, figure, step: int) -> None:
        """A ``matplotlib.figure.Figure`` as a TensorBoard image (rendered with Agg, without pyplot)."""
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        self.tensorboard.add_image(tag, np.asarray(canvas.buffer_rgba())[..., :3], step, dataformats="HWC")

    def close(self) -> None:
        os.close(self.file)
        self.tensorboard.close()


class NullWriter:
    """The writer of processes other than the chief in a multi-process run: records are written once, by process 0."""

    def write(self, record: dict) -> None:
        pass

    def figure(self, tag: str, figure, step: int) -> None:
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
