"""Renders the figures of README.md, docs/performance.md, docs/architecture.md and docs/recipe.md from the result files in bench/results/.

    python bench/render_docs.py          # rewrites the marked blocks in place
    python bench/render_docs.py --check  # exits 1 if a document differs from its result files

A block between ``<!-- render:NAME -->`` and ``<!-- /render:NAME -->`` is replaced by ``BLOCKS[NAME]()``, so a
figure in the documents cannot drift from the file it was measured into (tests/test_docs.py checks it).
"""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCUMENTS = (ROOT / "README.md", *(ROOT / "docs" / f"{name}.md" for name in ("performance", "architecture", "recipe")))
EXPERIMENT_ORDER = ("lenet", "lenet5_classic", "mnist_cnn", "resnet9")
TORCH_MODELS = {"lenet": "LeNet", "mnist_cnn": "MNIST CNN", "cifar_cnn": "`cifar_cnn`", "resnet20": "ResNet-20",
                "resnet9": "ResNet-9"}  # fmt: skip


def _results(prefix: str) -> list[tuple[Path, dict]]:
    return [(path, json.loads(path.read_text())) for path in sorted(RESULTS.glob(f"{prefix}-*.json"))]


def hardware(result: dict) -> str:
    """'2-core Intel(R) Xeon(R) Processor (AVX512), jax 0.10.2' from a result file's fields."""
    isa = f" ({result['vector_isa'].upper()})" if result.get("vector_isa") else ""
    return f"{result['cores']}-core {result['cpu']}{isa}, jax {result['jax']}"


def _link(path: Path, base: Path) -> str:
    return f"[{path.stem}]({Path('..') / path.relative_to(ROOT) if base != ROOT else path.relative_to(ROOT)})"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def experiments_table(base: Path = ROOT) -> str:
    """The results table: one row per experiment-*.json (per experiment and machine), in EXPERIMENT_ORDER, and the
    hardware they ran on."""
    rows = {(r["benchmark"].removeprefix("experiment-"), hardware(r)): (p, r) for p, r in _results("experiment")}
    if not rows:
        return _missing("experiment_runs")
    lines = [
        "| experiment | params | test accuracy (val) | wall time | command | result file |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for name, machine in sorted(rows, key=lambda key: ((EXPERIMENT_ORDER + key[:1]).index(key[0]), key[1])):
        path, r = rows[name, machine]
        lines.append(
            f"| `{name}` | {r['params']:,} | {100 * r['test_accuracy']:.2f}% ({100 * r['val_accuracy']:.2f}%) | "
            f"{_minutes(r['process_wall_s'])} | `{r['command']}` | {_link(path, base)} |"
        )
    machines = sorted({hardware(r) for _, r in rows.values()})
    return "\n".join(lines) + f"\n\n{'; '.join(machines)}."


def vs_pytorch(base: Path = ROOT) -> str:
    """Per machine, a table of cnnjax's and PyTorch's training images/s per model, their ratio and oneDNN's gain."""
    machines: dict[str, dict[str, tuple[Path, dict]]] = {}
    for path, r in _results("vs_pytorch"):
        machines.setdefault(hardware(r), {})[r["model"]] = (path, r)
    if not machines:
        return _missing("vs_pytorch")
    return "\n\n".join(_vs_pytorch_table(found, base) for _, found in sorted(machines.items()))


def _vs_pytorch_table(found: dict[str, tuple[Path, dict]], base: Path) -> str:
    """The table of one machine's result files, ``{model: (path, result)}``."""
    lines = [
        "| model | cnnjax images/s | PyTorch eager | cnnjax / PyTorch | with / without oneDNN's convolutions "
        "| at `matmul_precision=bfloat16` | result file |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for model, label in TORCH_MODELS.items():
        if model in found:
            path, r = found[model]
            rates = r["images_per_sec"]
            lines.append(
                f"| {label} | {rates['cnnjax']:,.0f} | {rates['torch_eager']:,.0f} | **{r['ratio_vs_torch']:.2f}x** | "
                f"{r['onednn_gain']:.2f}x | {_gain(r.get('bfloat16_gain'))} | {_link(path, base)} |"
            )
    first = next(iter(found.values()))[1]
    return "\n".join(lines) + f"\n\n{hardware(first)}, torch {first['torch']}, batch {first['batch']}, Adam."


def _gain(gain: float | None) -> str:
    """A ratio as '1.22x'; '-' where it was not measured (bfloat16 on a CPU that would emulate it)."""
    return "-" if gain is None else f"{gain:.2f}x"


def per_machine(prefix: str, separator: str = "\n\n"):
    """Makes a renderer of one result file, ``(path, result, base) -> str``, a block: ``(base) -> str`` rendering each
    machine's ``<prefix>-<cpu>.json`` in turn, joined by ``separator``."""

    def decorate(render_one):
        @functools.wraps(render_one)
        def block(base: Path = ROOT) -> str:
            found = _results(prefix)
            if not found:
                return _missing(prefix.split("-")[0])
            return separator.join(render_one(path, r, base) for path, r in found)

        return block

    return decorate


def _missing(name: str) -> str:
    return f"(not measured yet: `PYTHONPATH=. .venv/bin/python bench/{name}.py`)"


@per_machine("conv_lowering")
def conv_lowerings(path: Path, r: dict, base: Path) -> str:
    """Per layer: each lowering's forward+backward milliseconds, and XLA's time over the fastest other lowering."""
    names = list(next(iter(r["convolutions"].values()))["median_s"])
    lines = [f"| layer (batch {r['batch']}) | " + " | ".join(names) + " | XLA / fastest |",
             "| --- |" + " ---: |" * (len(names) + 1)]  # fmt: skip
    for label, entry in r["convolutions"].items():
        cells = " | ".join(f"{1e3 * entry['median_s'][n]:.2f}" for n in names)
        lines.append(f"| {label} | {cells} | {entry['xla_over_fastest']:.2f}x ({entry['fastest_not_xla']}) |")
    return "\n".join(lines) + f"\n\nmilliseconds; {hardware(r)}; {_link(path, base)}"


@per_machine("conv_lowering", separator="; ")
def max_pools(path: Path, r: dict, base: Path) -> str:
    """Per pooling layer: reduce_window's forward+backward time over cnnjax's."""
    parts = [f"{label}: {entry['reduce_window_over_cnnjax']:.2f}x" for label, entry in r["max_pool"].items()]
    return "; ".join(parts) + f" ({hardware(r)}; {_link(path, base)})"


@per_machine("xla_options")
def xla_options(path: Path, r: dict, base: Path) -> str:
    """Per model: images/s under each XLA:CPU setting as a ratio to XLA's default."""
    settings = list(next(iter(r["images_per_sec"].values())))
    lines = ["| model | " + " | ".join(settings) + " |", "| --- |" + " ---: |" * len(settings)]
    for model, rates in r["images_per_sec"].items():
        lines.append(f"| {model} | " + " | ".join(f"{rates[s] / rates['default']:.2f}x" for s in settings) + " |")
    return "\n".join(lines) + f"\n\nimages/s relative to XLA's default; {hardware(r)}; {_link(path, base)}"


def sweep_crossover(base: Path = ROOT) -> str:
    """Vectorized group over sequential trials, per batch size."""
    found = _results("sweep_vectorized")
    if not found:
        return _missing("sweep_vectorized")
    lines = []
    for path, r in found:
        ratios = ", ".join(f"{v:.2f}x at batch {b}" for b, v in r["vectorized_over_sequential"].items())
        lines.append(f"- {r['members']} {r['model']} trials: {ratios} ({hardware(r)}; {_link(path, base)})")
    return "\n".join(lines)


@per_machine("cpu_devices")
def cpu_devices(path: Path, r: dict, base: Path) -> str:
    """Per model: two CPU devices' images/s over one device's."""
    parts = [f"{model} {rates['ratio']:.2f}x" for model, rates in r["images_per_sec"].items()]
    return f"{r['devices']} devices over one: " + ", ".join(parts) + f" ({hardware(r)}; {_link(path, base)})"


@per_machine("fault_injection")
def fault_injection(path: Path, r: dict, base: Path) -> str:
    """Per scenario: faults injected, whether the run ended equal to the uninterrupted one, the time lost per fault."""
    lines = ["| scenario | fault | faults that hit | checkpoints damaged | ended equal | uninterrupted | lost per fault |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: |"]  # fmt: skip
    for row in r["scenarios"]:
        lines.append(f"| `{row['scenario']}` | {row['fault']} | {row['injected']} | {row['damaged']} | "
                     f"{'yes' if row['equal'] else 'NO'} | {row['uninterrupted_s']:.0f} s | "
                     f"{row['lost_s_per_fault']:.1f} s |")  # fmt: skip
    return "\n".join(lines) + f"\n\n{hardware(r)}; {_link(path, base)}."


@per_machine("recipe_cost")
def recipe_cost(path: Path, r: dict, base: Path) -> str:
    """Per recipe option: the step time with it over the experiment's own, per experiment."""
    names = list(r["experiments"])
    lines = ["| option | " + " | ".join(f"`{n}` (batch {r['experiments'][n]['batch_size']})" for n in names) + " |",
             "| --- |" + " ---: |" * len(names)]  # fmt: skip
    for option in r["experiments"][names[0]]["cost"]:
        lines.append(
            f"| `{option}` | " + " | ".join(f"{r['experiments'][n]['cost'][option]:.2f}x" for n in names) + " |"
        )
    return "\n".join(lines) + f"\n\n{hardware(r)}; {_link(path, base)}."


@per_machine("recipe_accuracy-resnet9")
def recipe_accuracy(path: Path, r: dict, base: Path) -> str:
    """Per recipe: validation and test accuracy and the wall time at one budget, the winner chosen on validation."""
    lines = ["| recipe | validation | test |", "| --- | ---: | ---: |"]
    for name, run in r["runs"].items():
        mark = " (chosen)" if name == r["winner"] else ""
        lines.append(f"| `{name}`{mark} | {100 * run['val_accuracy']:.2f}% | {100 * run['test_accuracy']:.2f}% |")
    return "\n".join(lines) + f"\n\n`{r['experiment']}`, {r['epochs']} epochs each; {hardware(r)}; {_link(path, base)}."


def _phases(entry: dict) -> str:
    """ "; cnnjax's start-up 7 s, training 49 s, validation, checkpoints and test at least 6 s: PyTorch's whole run over cnnjax's
    training alone 1.57x" where the bench measured the phases, else ''."""
    if "cnnjax_phases_s" not in entry:
        return ""
    p = entry["cnnjax_phases_s"]
    return (f"; cnnjax's start-up {p['start_up']:.0f} s, training {p['training']:.0f} s, validation, checkpoints and "
            f"test at least {p['rest']:.0f} s: PyTorch's whole run over cnnjax's training alone {entry['torch_s'] / p['training']:.2f}x")  # fmt: skip


def _startup_line(path: Path, r: dict, base: Path) -> str:
    return (f"- First training step of `lenet`: **{r['first_step_cold_cache_s']:.1f} s** after the command (empty "
            f"compilation cache; {r['first_step_warm_cache_s']:.1f} s with it warm; imports {r['imports_s']:.1f} s)")  # fmt: skip


def _loop_overhead_line(path: Path, r: dict, base: Path) -> str:
    parts = [f"`{name}` {100 * e['overhead']:.1f}% ({e['loop_images_per_sec']:,.0f} vs "
             f"{e['step_images_per_sec']:,.0f} images/s)" for name, e in r["experiments"].items()]  # fmt: skip
    return f"- The training loop's overhead over its jitted step alone (loop vs step): {', '.join(parts)}"


def _whole_run_line(path: Path, r: dict, base: Path) -> str:
    parts = [f"`{name}` ({e['epochs']} epoch{'s' if e['epochs'] > 1 else ''}) **{e['ratio']:.2f}x** "
             f"({e['cnnjax_s']:.0f} s vs {e['torch_s']:.0f} s{_phases(e)})" for name, e in r["experiments"].items()]  # fmt: skip
    return f"- Whole runs against PyTorch {r['torch']} eager doing the same work: {', '.join(parts)}"


def _speedrun_line(path: Path, r: dict, base: Path) -> str:
    runs = ", ".join(f"{100 * run['test_accuracy']:.2f}% in {run['wall_s']:.0f} s" for run in r["runs"])
    seeds = ", ".join(str(run["seed"]) for run in r["runs"])
    return (f"- `{r['command'].split('=')[-1]}`, {100 * r['target_accuracy']:.0f}% test in "
            f"{_minutes(r['target_seconds'])}: {'met' if r['met'] else '**not met**'} for seed{'s' * (len(r['runs']) > 1)} {seeds} ({runs})")  # fmt: skip


TIME_TO_ACCURACY = {"startup-lenet": _startup_line, "loop_overhead": _loop_overhead_line,
                    "whole_run_vs_pytorch": _whole_run_line, "speedrun": _speedrun_line}  # fmt: skip


def time_to_accuracy(base: Path = ROOT) -> str:
    """Start-up, the loop against its step, whole runs against PyTorch and the speedruns: one line per result file,
    grouped by the machine they were measured on."""
    machines: dict[str, list[str]] = {}
    for prefix, line in TIME_TO_ACCURACY.items():
        for path, r in _results(prefix):
            machines.setdefault(hardware(r), []).append(f"{line(path, r, base)} ({_link(path, base)})")
    if not machines:
        return _missing("startup")
    return "\n\n".join(f"On a {machine}:\n\n" + "\n".join(lines) for machine, lines in sorted(machines.items()))


@per_machine("batch_size_speed-lenet")
def batch_size_speed(path: Path, r: dict, base: Path) -> str:
    """The training loop's images/s per batch size."""
    parts = ", ".join(f"{rate:,.0f} at batch {size}" for size, rate in r["images_per_sec"].items())
    return f"`{r['experiment']}`: {parts} images/s ({hardware(r)}; {_link(path, base)})"


@per_machine("batch_regimes-lenet")
def batch_regimes(path: Path, r: dict, base: Path) -> str:
    """Per-example against mini-batch training: a table per batch size of the best rate's accuracy and times."""
    lines = [
        "| batch | SGD rate | validation | test | training | whole run | validation at each rate tried |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for size, e in r["regimes"].items():
        tried = ", ".join(f"{float(rate):.3g}: " + ("diverged" if t.get("diverged") else f"{100 * t['val_accuracy']:.1f}%")
                          for rate, t in e["tried"].items())  # fmt: skip
        lines.append(f"| {size} | {e['learning_rate']:.3g} | {100 * e['val_accuracy']:.2f}% | {100 * e['test_accuracy']:.2f}% | "
                     f"{e['train_time_s']:.1f} s | {e['wall_time_s']:.1f} s | {tried} |")  # fmt: skip
    epochs = f"{r['epochs']} epoch{'s' if r['epochs'] > 1 else ''}"
    return "\n".join(lines) + f"\n\n`{r['experiment']}`, {epochs} each ({hardware(r)}; {_link(path, base)})."


@per_machine("vanishing_gradients")
def vanishing_gradients(path: Path, r: dict, base: Path) -> str:
    """The first step's per-layer gradient norms of the sigmoid LeNet against ReLU's, and their accuracies."""
    parts = []
    for activation, e in r["runs"].items():
        norms = ", ".join(f"{layer} {norm:.2g}" for layer, norm in e["first_step_grad_norms"].items())
        parts.append(f"- {activation}: first-step gradient norms {norms} (conv1 / logits **{e['input_over_output']:.3g}**); "
                     f"{100 * e['test_accuracy']:.2f}% test after {r['epochs']} epochs")  # fmt: skip
    return "\n".join(parts) + f"\n\n{hardware(r)}; {_link(path, base)}."


@per_machine("diagnostics_cost")
def diagnostics_cost(path: Path, r: dict, base: Path) -> str:
    """The training step's and the evaluation's speed with ``train.diagnostics`` on and off."""
    parts = [f"`{name}` step {e['train_images_per_sec']['on']:,.0f} vs {e['train_images_per_sec']['off']:,.0f} "
             f"images/s (**{e['train_cost']:.3f}x** the time), evaluation {e['eval_images_per_sec']['on']:,.0f} vs "
             f"{e['eval_images_per_sec']['off']:,.0f} ({e['eval_cost']:.3f}x)" for name, e in r["experiments"].items()]  # fmt: skip
    return f"With the diagnostics on vs off: {'; '.join(parts)} ({hardware(r)}; {_link(path, base)})."


@per_machine("profile_step-lenet")
def step_profile(path: Path, r: dict, base: Path) -> str:
    """Where LeNet's training step spends its time: per layer and pass, and the convolutions' share."""
    total = r["traced_s_per_step"]
    layers = sorted(r["s_per_step_by_layer"].items(), key=lambda item: -sum(item[1].values()))
    lines = [
        "| part of the step | forward ms | backward ms | other ms | share |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for layer, parts in layers:
        cells = [f"{1e3 * parts[p]:.2f}" if p in parts else "" for p in ("forward", "backward")]
        other = sum(s for p, s in parts.items() if p not in ("forward", "backward"))
        lines.append(f"| {layer} | {' | '.join(cells)} | {f'{1e3 * other:.2f}' if other else ''} | "
                     f"{100 * sum(parts.values()) / total:.1f}% |")  # fmt: skip
    convolutions = sum(
        op["s_per_step"] for op in r["top_operations"] if op["source"].endswith(("onednn_conv", "conv_general_dilated"))
    )
    return "\n".join(lines) + (
        f"\n\nConvolutions: **{100 * convolutions / total:.0f}%** of the traced time. `{r['model']}`, batch {r['batch']}, "
        f"under the profiler ({1e3 * r['step_wall_s']:.1f} ms per step; {hardware(r)}; {_link(path, base)})."
    )


BLOCKS = {
    "step_profile": step_profile,
    "batch_size_speed": batch_size_speed,
    "batch_regimes": batch_regimes,
    "vanishing_gradients": vanishing_gradients,
    "diagnostics_cost": diagnostics_cost,
    "recipe_accuracy": recipe_accuracy,
    "time_to_accuracy": time_to_accuracy,
    "recipe_cost": recipe_cost,
    "fault_injection": fault_injection,
    "experiments": experiments_table,
    "vs_pytorch": vs_pytorch,
    "conv_lowerings": conv_lowerings,
    "max_pools": max_pools,
    "xla_options": xla_options,
    "sweep_crossover": sweep_crossover,
    "cpu_devices": cpu_devices,
}


def render(text: str, base: Path = ROOT) -> str:
    """``text`` with every marked block re-rendered; ``base``: the document's directory (for relative links)."""

    def block(match: re.Match) -> str:
        name = match.group(1)
        return f"<!-- render:{name} -->\n{BLOCKS[name](base)}\n<!-- /render:{name} -->"

    return re.sub(r"<!-- render:(\w+) -->.*?<!-- /render:\1 -->", block, text, flags=re.S)


def main() -> None:
    stale = []
    for document in DOCUMENTS:
        text = document.read_text()
        rendered = render(text, document.parent)
        if rendered != text:
            stale.append(document)
            if "--check" not in sys.argv:
                document.write_text(rendered)
    if stale and "--check" in sys.argv:
        sys.exit(f"out of date with bench/results: {', '.join(str(p.relative_to(ROOT)) for p in stale)}")


if __name__ == "__main__":
    main()
