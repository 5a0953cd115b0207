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


def test_each_machines_figures_are_rendered_under_its_own_name(tmp_path, monkeypatch):
    """Result files of the same benchmark from two CPUs: both rendered, each under its machine, none overwritten."""
    import json

    module = render_docs()
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "RESULTS", results)
    for cpu, rate, bfloat16_gain in (("AMD EPYC", 111, None), ("Intel Xeon", 222, 1.25)):
        machine = {"cpu": cpu, "cores": 2, "vector_isa": "avx2", "jax": "0.10.2", "torch": "2.13.0", "batch": 128}
        slug = cpu.lower().replace(" ", "-")
        figures = {"images_per_sec": {"cnnjax": rate, "torch_eager": 100}, "ratio_vs_torch": rate / 100,
                   "onednn_gain": 1.0, "bfloat16_gain": bfloat16_gain, "model": "lenet"}  # fmt: skip
        (results / f"vs_pytorch-lenet-{slug}.json").write_text(json.dumps({**machine, **figures}))
        startup = {"first_step_cold_cache_s": rate / 10, "first_step_warm_cache_s": 1.0, "imports_s": 0.5}
        (results / f"startup-lenet-{slug}.json").write_text(json.dumps({**machine, **startup}))
    tables = module.vs_pytorch(tmp_path).split("\n\n")
    assert [("AMD EPYC" in t, "| 111 |" in t, "Intel Xeon" in t, "| 222 |" in t) for t in tables] == [
        (False, True, False, False), (True, False, False, False), (False, False, False, True), (False, False, True, False)
    ]  # fmt: skip
    assert "| 1.00x | - |" in tables[0] and "| 1.00x | 1.25x |" in tables[2]  # bfloat16's gain where measured
    lines = module.time_to_accuracy(tmp_path)
    assert lines.index("On a 2-core AMD EPYC") < lines.index("**11.1 s**") < lines.index("On a 2-core Intel Xeon")
    assert lines.index("On a 2-core Intel Xeon") < lines.index("**22.2 s**")


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
