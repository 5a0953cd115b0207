"""Using a trained run: ``load(workdir) -> Predictor`` for class probabilities of new images, and ``export``.

``Predictor.predict`` takes uint8 NHWC arrays or image files, prepares them with the run's saved preprocessing
(``cnnjax.run_card``) and averages the run's test-time views, exactly as the run's evaluation did.
``Predictor.export(directory)`` writes ``model.jax``, a serialized ``jax.export`` program (StableHLO) of preprocessing
+ model + softmax over a symbolic batch of uint8 images, which runs without cnnjax or Flax::

    exported = jax.export.deserialize(open("model.jax", "rb").read())
    probabilities = exported.call(images)  # uint8 (N, H, W, C) -> float32 (N, num_classes)

and, with ``onnx=True`` (the ``onnx`` extra), ``model.onnx`` for onnxruntime and other ONNX runtimes.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import checkpoint, data, models, run_card, train
from cnnjax import functional as F
from cnnjax.data import image_folder

EXPORT_PLATFORMS = ("cpu", "cuda")


def _tuples(value):
    """JSON lists back to the tuples model fields are declared with."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def load(workdir: str | Path, which: str = "best") -> Predictor:
    """The model of run directory ``workdir`` at its best checkpoint (the one its test used; ``which='last'``: its
    latest), with the run's preprocessing, class names and test-time views. A run that cannot be used (no
    ``inference.json``, no finished checkpoint) is a ValueError saying why."""
    if which not in ("best", "last"):
        raise ValueError(f"load: which must be 'best' or 'last', got {which!r}")
    card, preprocessing = run_card.read(workdir)
    fields = {k: _tuples(v) for k, v in card["model"].items() if k != "name"}
    model = models.get(card["model"]["name"], **fields)
    params, model_state, where = checkpoint.read_variables(workdir, which)
    expected = models.abstract_init(model, preprocessing_shape(card))["params"]
    if jax.tree_util.tree_structure(expected) != jax.tree_util.tree_structure(params) or any(
        a.shape != b.shape for a, b in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(params))
    ):
        raise ValueError(f"the checkpoint {where} does not hold the parameters of the model {workdir} describes")
    return Predictor(model, {"params": params, **model_state}, card, preprocessing, where)


def preprocessing_shape(card: dict) -> tuple[int, int, int]:
    """The (H, W, C) the model sees: the input shape after the saved zero-padding."""
    h, w, c = card["input_shape"]
    pad_to = card["preprocessing"]["pad_to"]
    return (pad_to, pad_to, c) if pad_to else (h, w, c)


def expand_paths(patterns) -> list[Path]:
    """Image files named by files, folders (their images, recursively) or glob patterns, in order; one that names
    nothing is a ValueError naming it."""
    paths = []
    for pattern in patterns:
        pattern = str(pattern)
        if Path(pattern).is_dir():
            found = sorted(p for p in Path(pattern).rglob("*") if p.suffix.lower() in data.IMAGE_SUFFIXES)
        elif Path(pattern).is_file():
            found = [Path(pattern)]
        else:
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not found:
            raise ValueError(f"--predict={pattern} names no image file (give files, folders or glob patterns)")
        paths += found
    return paths


class Predictor:
    """A trained model with everything needed to classify new images (see :func:`load`).

    ``class_names``: the run's classes; ``input_shape``: the (H, W, C) of the uint8 images it takes.
    """

    def __init__(self, model, variables: dict, card: dict, preprocessing: data.Preprocessing, source: str):
        self.model, self.variables, self.card, self.preprocessing, self.source = (
            model, variables, card, preprocessing, source,
        )  # fmt: skip
        self.class_names = tuple(card["class_names"])
        self.input_shape = tuple(card["input_shape"])
        self._probabilities = jax.jit(self.probabilities_fn())

    def probabilities_fn(self):
        """(variables, preprocessed float32 images (N, H, W, C)) -> class probabilities (N, K): the softmax of the
        class scores of the outputs averaged over the run's test-time views (as the run's evaluation)."""
        _, scores_fn = train.LOSSES[self.card["loss"]]
        views = functools.partial(data.test_time_views, **self.card["test_time_views"])
        outputs_of = train.with_matmul_precision(train.eval_outputs_fn(self.model, self.card["compute_dtype"], views),
                                                 self.card.get("matmul_precision", "default"))  # fmt: skip
        return lambda variables, x: jax.nn.softmax(scores_fn(outputs_of(variables, x)), axis=-1)

    def read(self, paths) -> np.ndarray:
        """Image files as the uint8 array (N, H, W, C) the model takes: decoded as the run's image folder was
        (``data.image_size``, ``data.channels``), converted to the model's grayscale or RGB."""
        decode = self.card["decode"]
        channels = decode["channels"] or (self.input_shape[2] if self.input_shape[2] in (1, 3) else 0)
        arrays = []
        for path in paths:
            array = image_folder.decode(path, image_size=decode["image_size"], channels=channels)
            if array.shape != self.input_shape:
                raise ValueError(
                    f"{path} is a {_shape(array.shape)} image; the model takes {_shape(self.input_shape)} images "
                    "(resize it, or train with --config.data.image_size to resize every image)"
                )
            arrays.append(array)
        return np.stack(arrays)

    def as_images(self, images) -> np.ndarray:
        """uint8 images (N, H, W, C) from such an array, one image (H, W, C), a path, or a list of paths."""
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        if isinstance(images, (list, tuple)) and images and isinstance(images[0], (str, os.PathLike)):
            return self.read(images)
        array = np.asarray(images)
        if array.shape == self.input_shape:
            array = array[None]
        if array.dtype != np.uint8 or array.shape[1:] != self.input_shape:
            raise ValueError(
                f"predict: got {array.dtype} images of shape {array.shape}; the model takes uint8 images "
                f"(N, {', '.join(map(str, self.input_shape))}) with values 0-255, or image file paths"
            )
        return array

    def predict(self, images, *, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, K) float32 of ``images``: uint8 (N, H, W, C) (or one (H, W, C)), a path or a list
        of paths. Batches are padded to powers of two up to ``batch_size`` (a few compiled sizes serve any N)."""
        images = self.as_images(images)
        results = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            size = min(batch_size, 1 << (len(chunk) - 1).bit_length())
            padded = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), np.uint8)])
            results.append(np.asarray(self._probabilities(self.variables, self.preprocessing(padded)))[: len(chunk)])
        return np.concatenate(results) if results else np.zeros((0, len(self.class_names)), np.float32)

    def top_k(self, images, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (N, k), class indices (N, k)) of the ``k`` likeliest classes per image, likeliest first;
        ``class_names[i]`` names index i."""
        probabilities = self.predict(images)
        k = min(k, probabilities.shape[1])
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(probabilities, order, axis=1), order

    def serving_fn(self):
        """uint8 images (N, H, W, C) -> class probabilities (N, K), with the preprocessing and the weights inside."""
        preprocess, probabilities = self.preprocessing.jax_fn(), self.probabilities_fn()
        variables = jax.tree_util.tree_map(jnp.asarray, self.variables)
        return lambda images: probabilities(variables, preprocess(images))

    def export(self, directory: str | Path, platforms=EXPORT_PLATFORMS, onnx: bool = False) -> dict:
        """Writes ``directory/model.jax`` (see the module docstring), ``directory/model.json`` (class names, input
        shape and dtype, platforms) and with ``onnx`` ``directory/model.onnx`` (through jax2onnx: ``pip install
        'cnnjax[onnx]'``); returns model.json's content. Convolutions are traced with the portable 'xla' lowering
        (``functional.conv_lowering``); model.jax is lowered for every platform in ``platforms`` this JAX can lower
        for, the CPU at least."""
        if onnx:
            try:
                import jax2onnx
            except ImportError:
                raise ValueError("ONNX export needs jax2onnx and onnxruntime: pip install 'cnnjax[onnx]'") from None
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (batch,) = jax.export.symbolic_shape("batch")
        spec = jax.ShapeDtypeStruct((batch, *self.input_shape), jnp.uint8)
        with F.conv_lowering("xla"):
            serve = jax.jit(self.serving_fn())
            try:
                exported = jax.export.export(serve, platforms=tuple(platforms))(spec)
            except Exception:  # noqa: BLE001 - a platform this jaxlib cannot lower for: the CPU alone
                exported = jax.export.export(serve, platforms=("cpu",))(spec)
            if onnx:
                serde = logging.getLogger("onnx_ir.serde")  # one warning per untyped constant shape, harmless
                level, _ = serde.level, serde.setLevel(logging.ERROR)
                try:
                    model = jax2onnx.to_onnx(self.serving_fn(), [spec], model_name="cnnjax", input_names=["images"],
                                             output_names=["probabilities"])  # fmt: skip
                finally:
                    serde.setLevel(level)
                (directory / "model.onnx").write_bytes(model.SerializeToString())
        (directory / "model.jax").write_bytes(exported.serialize())
        description = {
            "class_names": list(self.class_names),
            "input_shape": ["batch", *self.input_shape],
            "input_dtype": "uint8",
            "output": "float32 class probabilities (batch, num_classes)",
            "platforms": list(exported.platforms),
            "files": ["model.jax", *(["model.onnx"] if onnx else [])],
            "source": self.source,
            "usage": "jax.export.deserialize(open('model.jax', 'rb').read()).call(images)",
        }
        (directory / "model.json").write_text(json.dumps(description, indent=2) + "\n")
        return description


def _shape(shape) -> str:
    return "x".join(map(str, shape))
