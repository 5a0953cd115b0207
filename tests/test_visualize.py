"""cnnjax.visualize and cnnjax.plots: the figures of a tiny run, drawn without pyplot's global state."""

import subprocess
import sys

import jax
import matplotlib.image
import numpy as np

import cnnjax
from cnnjax import data, train, visualize
from tests.fakes import small_config


def test_visualizations_of_a_tiny_run(tmp_path):
    config = small_config(tmp_path, num_epochs=1)
    with jax.numpy_dtype_promotion("standard"):
        train.train_and_evaluate(config, tmp_path / "run")
        paths = visualize.visualize(config, tmp_path / "run", image_index=3)
    assert set(paths) == {"filters", "feature_maps", "confusion_matrix", "misclassified", "augmentation"}
    for path in paths.values():
        height, width = matplotlib.image.imread(path).shape[:2]
        assert height >= 200 and width >= 200


def test_the_augmentation_page_shows_what_the_training_step_draws(tmp_path):
    config = small_config(tmp_path, num_epochs=1)
    config.data.random_erasing, config.data.mixup_alpha = 1.0, 0.5
    with jax.numpy_dtype_promotion("standard"):
        train.train_and_evaluate(config, tmp_path / "run")
        predictor = cnnjax.load(tmp_path / "run")
        images, _ = data.load("mnist", "train", data_dir=config.data.data_dir, tfds_dir=config.data.tfds_dir)
        draws, lams = visualize.augmented_examples(config, predictor.preprocessing, images[:8], draws=3)
    assert draws.shape == (3, 8, 28, 28, 1) and all(0 < lam < 1 for lam in lams)  # every draw mixed
    unit = images[:8] / 255.0
    assert not np.allclose(draws[0], unit, atol=1e-3) and not np.allclose(draws[0], draws[1])
    assert draws.min() >= 0 and draws.max() <= 1
    config.data.random_erasing, config.data.mixup_alpha = 0.0, 0.0  # nothing enabled: the images as they are
    with jax.numpy_dtype_promotion("standard"):
        plain, _ = visualize.augmented_examples(config, predictor.preprocessing, images[:8], draws=1)
    np.testing.assert_allclose(plain[0], unit, atol=1e-5)


def test_drawing_leaves_pyplot_and_its_backend_alone(tmp_path):
    script = (
        "import sys, numpy as np\n"
        "from cnnjax import metrics, plots, train\n"
        f"plots.confusion_matrix(np.array([0, 1]), np.array([0, 0]), ['a', 'b'], {str(tmp_path / 'c.png')!r}, 't')\n"
        f"writer = metrics.MetricsWriter({str(tmp_path)!r})\n"
        "writer.figure('confusion', plots.confusion_figure(np.eye(2, dtype=int), ['a', 'b'], 't'), 1)\n"
        "writer.close()\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert matplotlib.image.imread(tmp_path / "c.png").shape[2] in (3, 4)
