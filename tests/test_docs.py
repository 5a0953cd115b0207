"""The documents: their figures are the result files' (bench/render_docs.py), their links resolve, and nothing
points outside the repository."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    ROOT / "bench" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]


def render_docs():
    spec = importlib.util.spec_from_file_location("render_docs", ROOT / "bench" / "render_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("document", render_docs().DOCUMENTS, ids=lambda p: p.name)
def test_rendered_figures_match_their_result_files(document):
    assert render_docs().render(document.read_text(), document.parent) == document.read_text(), (
        f"{document.name} is out of date with bench/results: run python bench/render_docs.py"
    )


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_inside_the_repository(document):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", document.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path = (document.parent / target).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"{document.name} links to {target}"


def test_nothing_points_outside_the_repository():
    files = [*DOCUMENTS, *ROOT.glob("cnnjax/**/*.py"), *ROOT.glob("experiments/*.py"), ROOT / "launch.py"]
    for path in files:
        assert "../shared" not in path.read_text(), path


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_the_example_notebook_runs():
    """Runs every code cell of examples/quickstart.ipynb in one namespace, as a kernel would."""
    import json

    import jax

    notebook = json.loads((ROOT / "examples" / "quickstart.ipynb").read_text())
    namespace = {}
    with jax.numpy_dtype_promotion("standard"):
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), "quickstart.ipynb", "exec"), namespace)  # noqa: S102
    assert namespace["results"]["test_accuracy"] > 0.7 and namespace["probabilities"].shape == (5, 3)
