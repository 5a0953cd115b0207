"""What a run directory keeps so that its model can be used without the training data.

``inference.json``: the model (name and fields), the uint8 input shape (H, W, C), the class names, how image files are
decoded (``data.image_size``, ``data.channels``), the preprocessing (pad_to, its kind and a digest of its statistics),
the test-time views and the loss (which turns outputs into class scores). ``preprocessing.npz``: the fitted
statistics (per-channel scale and shift, or the ZCA mean and matrix). Both are written when a run starts; a resumed
run checks that its config and data still give the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cnnjax import metrics
from cnnjax.data import Preprocessing

CARD = "inference.json"
STATISTICS = "preprocessing.npz"
FORMAT = 1


def describe(config, splits) -> dict:
    """The card of a run of ``config`` on ``splits`` (a ``data.Splits``)."""
    return {
        "format": FORMAT,
        "model": config.model.to_dict(),
        "input_shape": list(splits.input_shape),
        "input_dtype": "uint8",
        "class_names": list(splits.class_names),
        "decode": {"image_size": config.data.image_size, "channels": config.data.channels},
        "preprocessing": splits.preprocessing.describe(),
        "test_time_views": {"flip": config.data.test_time_flip, "shift": config.data.test_time_shift},
        "loss": config.train.loss,
        "compute_dtype": config.train.compute_dtype,
        "dataset": config.data.name,
        # only where set: the cards of runs at the default precision stay as they were written
        **({"matmul_precision": precision} if (precision := config.train.matmul_precision) != "default" else {}),
    }


def write_or_check(workdir: Path, config, splits) -> None:
    """Writes the card of a new run (or of a run directory written before cards existed); for a run that has one,
    raises a ValueError naming what differs when this config and data would describe another model."""
    card = json.loads(json.dumps(describe(config, splits)))
    path = workdir / CARD
    if path.exists():
        saved = json.loads(path.read_text())
        differing = sorted(k for k in set(card) | set(saved) if card.get(k) != saved.get(k))
        if differing:
            raise ValueError(
                f"{path} describes another model than this config and data ({', '.join(differing)} differ: e.g. "
                f"{differing[0]} {saved.get(differing[0])!r} saved vs {card.get(differing[0])!r} now); resume with "
                "the run's own config and data, or use a new --workdir"
            )
        return
    tmp = workdir / f".{STATISTICS}.tmp.npz"
    np.savez(tmp, **splits.preprocessing.arrays())
    tmp.replace(workdir / STATISTICS)
    metrics.write_json(path, card)


def read(workdir: str | Path) -> tuple[dict, Preprocessing]:
    """(card, preprocessing) of a run directory; a ValueError saying why when the run cannot be used for inference."""
    workdir = Path(workdir)
    path = workdir / CARD
    if not (workdir / "config.json").is_file():
        raise ValueError(
            f"{workdir} is not a run directory (it has no config.json); pass the --workdir of a training run"
        )
    if not path.exists():
        raise ValueError(
            f"{workdir} has no {CARD}: the run was written before runs kept their preprocessing and class names, so "
            "new images cannot be prepared as its training data was. Resuming it once (launch.py with the same "
            "--workdir and config) writes the file, or train a new run"
        )
    card = json.loads(path.read_text())
    if card.get("format") != FORMAT:
        raise ValueError(f"{path} has format {card.get('format')!r}; this cnnjax reads format {FORMAT}")
    with np.load(workdir / STATISTICS) as arrays:
        statistics = {name: arrays[name] for name in arrays.files}
    preprocessing = Preprocessing(card["preprocessing"]["pad_to"], **statistics)
    if preprocessing.describe() != card["preprocessing"]:
        raise ValueError(f"{workdir / STATISTICS} does not match the digest in {path}: the file was changed or damaged")
    return card, preprocessing
