"""From a folder of images to an exported model: preparation, prediction latency, export size and agreement.

    PYTHONPATH=. .venv/bin/python bench/inference.py [--images=10000] [--rounds=7]

Writes ``--images`` Fashion-MNIST training images (Debian's dataset-fashion-mnist) as PNG class folders, then times
preparing them (decoding into the cache) and loading them again from the cache, trains ``lenet`` on them for one
epoch, and times ``Predictor.predict`` on 1 and 1,000 image arrays (medians of interleaved rounds after a warm-up).
Exports the run (model.jax, and model.onnx where jax2onnx is installed) and prints the largest difference of their
probabilities from ``predict``. Writes bench/results/inference-<cpu>.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import workloads

import cnnjax
from cnnjax import train
from cnnjax.config import base_config
from cnnjax.data import image_folder, sources
from tests import fakes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    images, labels = sources.read_idx_split(*sources.find_idx_files(Path("/usr/share/datasets/fashion-mnist"), "train"))
    images, labels = images[: args.images], labels[: args.images]
    work = Path(tempfile.mkdtemp(prefix="cnnjax-bench-"))
    fakes.make_image_folder(work / "folder", images, labels, sources.DATASETS["fashion_mnist"].class_names)
    start = time.perf_counter()
    image_folder.load(work / "folder", cache_dir=work / "cache")
    prepare_s = time.perf_counter() - start
    start = time.perf_counter()
    image_folder.load(work / "folder", cache_dir=work / "cache")
    cached_s = time.perf_counter() - start

    config = base_config()
    config.data.name, config.data.data_dir, config.data.tfds_dir = (
        "image_folder",
        str(work / "folder"),
        str(work / "cache"),
    )
    config.train.num_epochs = 1
    train.train_and_evaluate(config, work / "run")
    predictor = cnnjax.load(work / "run")
    one, thousand = images[:1], images[:1000]
    medians = workloads.interleaved_medians(
        {"predict 1": lambda: predictor.predict(one), "predict 1000": lambda: predictor.predict(thousand)}, args.rounds
    )
    onnx = True
    try:
        import onnxruntime
    except ImportError:
        onnx = False
    predictor.export(work / "export", onnx=onnx)
    expected = predictor.predict(thousand)
    exported = jax.export.deserialize((work / "export" / "model.jax").read_bytes())
    agreement = {"model.jax": float(np.abs(np.asarray(exported.call(thousand)) - expected).max())}
    if onnx:
        session = onnxruntime.InferenceSession(str(work / "export" / "model.onnx"))
        agreement["model.onnx"] = float(np.abs(session.run(None, {"images": thousand})[0] - expected).max())
    sizes = {p.name: p.stat().st_size for p in (work / "export").iterdir()}
    print(f"prepare {args.images:,} PNGs: {prepare_s:.2f} s (from the cache: {cached_s:.3f} s)")
    print(
        f"predict: 1 image {1000 * medians['predict 1']:.1f} ms, 1,000 images {1000 * medians['predict 1000']:.0f} ms"
    )
    print(f"export sizes {sizes}; largest probability difference from predict {agreement}")
    path = workloads.write_result(
        "inference",
        {"images": args.images, "prepare_s": prepare_s, "prepare_cached_s": cached_s, "rounds": args.rounds,
         "predict_median_s": medians, "export_bytes": sizes, "max_abs_difference": agreement},
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
