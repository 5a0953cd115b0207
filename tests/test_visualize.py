"""cnnjax.visualize and cnnjax.plots: the figures of a tiny run, drawn without pyplot's global state."""

import subprocess
import sys

import jax
import matplotlib.image

from cnnjax import train, visualize
from tests.fakes import small_config


def test_visualizations_of_a_tiny_run(tmp_path):
    config = small_config(tmp_path, num_epochs=1)
    with jax.numpy_dtype_promotion("standard"):
        train.train_and_evaluate(config, tmp_path / "run")
        paths = visualize.visualize(config, tmp_path / "run", image_index=3)
    assert set(paths) == {"filters", "feature_maps", "confusion_matrix", "misclassified"}
    for path in paths.values():
        height, width = matplotlib.image.imread(path).shape[:2]
        assert height >= 200 and width >= 200


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
