"""Training speed against the batch size, down to one example per step: the training loop's images/s.

    PYTHONPATH=. .venv/bin/python bench/batch_size_speed.py [--experiment=lenet] [--batch_sizes=1,8,32,128] [--images=4096]

For each batch size a fresh 2-epoch run of the experiment (on the prepared offline data) trains ``--images`` images
per epoch (``train.limit_batches``) through ``train.train_and_evaluate``, with everything it logs; its second epoch's
images/s (the first includes compiling) is the figure. Writes ``bench/results/batch_size_speed-<name>-<cpu>.json``.
"""

from __future__ import annotations

import argparse
import importlib

import workloads
from loop_overhead import loop_images_per_sec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiment", default="lenet")
    parser.add_argument("--batch_sizes", default="1,8,32,128")
    parser.add_argument("--images", type=int, default=4096)
    args = parser.parse_args()
    rates = {}
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        config = importlib.import_module(f"experiments.{args.experiment}").get_config()
        with config.unlocked():
            config.data.batch_size = batch_size
            config.train.num_epochs = 2
            config.train.limit_batches = args.images // batch_size
        rates[batch_size] = loop_images_per_sec(config)
        print(f"{args.experiment} at batch {batch_size}: {rates[batch_size]:,.0f} images/s")
    path = workloads.write_result(f"batch_size_speed-{args.experiment}",
                                  {"experiment": args.experiment, "images_per_epoch": args.images,
                                   "images_per_sec": rates})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
