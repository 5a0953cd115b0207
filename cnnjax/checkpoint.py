"""Orbax checkpoints of a run: the last K periodic ones and the best one, atomic, resumable.

Orbax writes each checkpoint into a temporary directory and renames it when complete (and removes leftovers of an
interrupted write at start-up), so a kill at any moment leaves the previous checkpoints intact.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


def _manager(path: Path, **options) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, **options)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(path.absolute(), options=options, item_handlers=handlers)


def _shapes(tree) -> dict[str, tuple]:
    """{'params/conv1/kernel': shape, ...} for comparing architectures."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


class Checkpoints:
    """``directory/periodic`` keeps the last ``keep`` states, ``directory/best`` the best one. Each checkpoint holds
    the training state (a pytree) and a JSON dict of loop bookkeeping (``meta``)."""

    def __init__(self, directory: str | Path, keep: int):
        self.directory = Path(directory)
        self.periodic = self._manager(self.directory / "periodic", keep)
        self.best = self._manager(self.directory / "best", 1)

    @staticmethod
    def _manager(path: Path, keep: int) -> ocp.CheckpointManager:
        return _manager(path, max_to_keep=keep, cleanup_tmp_directories=True, create=True)

    @staticmethod
    def _save(manager: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
        if step in manager.all_steps():  # re-reached after a resume: the content is the same by determinism
            return
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def save(self, step: int, state, meta: dict) -> None:
        self._save(self.periodic, step, state, meta)

    def save_best(self, step: int, state, meta: dict) -> None:
        self._save(self.best, step, state, meta)

    def latest_step(self) -> int | None:
        return self.periodic.latest_step()

    @staticmethod
    def _restore(manager: ocp.CheckpointManager, step: int, like):
        saved = _shapes(manager.item_metadata(step)["state"].tree["params"])
        expected = _shapes(like["params"])
        fix = "use a new --workdir for a different model, or restore the config that wrote it"
        if saved != expected:
            differences = [
                f"params{key}: checkpoint {saved.get(key, 'missing')} vs model {expected.get(key, 'missing')}"
                for key in sorted(set(saved) | set(expected))
                if saved.get(key) != expected.get(key)
            ]
            more = " ..." if len(differences) > 3 else ""
            raise ValueError(
                f"the checkpoint in {manager.directory} was written by a different architecture "
                f"({'; '.join(differences[:3])}{more}); {fix}"
            )
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"the checkpoint in {manager.directory} does not match this run's optimizer state (another optimizer "
                f"or option?): {str(error)[:300]}; {fix}"
            ) from None
        return restored["state"], restored["meta"]

    def restore(self, step: int, like):
        """(state, meta) of periodic checkpoint ``step``, shaped like ``like``; a different architecture is a clear
        ValueError."""
        return self._restore(self.periodic, step, like)

    def restore_best(self, like):
        """(state, meta) of the best checkpoint, or None if there is none."""
        step = self.best.latest_step()
        return None if step is None else self._restore(self.best, step, like)

    def close(self) -> None:
        self.periodic.close()
        self.best.close()


def find(path: str | Path, which: str = "best") -> tuple[Path, int]:
    """(checkpoint manager directory, step) that ``path`` names: a run directory or its ``checkpoints/`` (its best
    checkpoint for ``which='best'`` where it has one, else its latest periodic one), a ``best`` or ``periodic``
    directory (its latest), or one step's directory in those. Raises a ValueError saying what was looked for."""
    path = Path(path).expanduser()
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if path.name.isdigit() and path.is_dir():
        return path.parent, int(path.name)
    kinds = ["best", "periodic"] if which == "best" else ["periodic"]
    for candidate in [path / kind for kind in kinds] + [path]:
        if candidate.is_dir() and (step := _manager(candidate, create=False).latest_step()) is not None:
            return candidate, step
    raise ValueError(
        f"{path} holds no finished checkpoint; name a run directory (--workdir of a run that finished at least one "
        "epoch), its checkpoints/ folder, or one checkpoint's step folder"
    )


def read_variables(path: str | Path, which: str = "best") -> tuple[dict, dict, str]:
    """(params, model_state, where) of the checkpoint ``path`` names (see :func:`find`), read without a template
    and without writing anything there; ``where`` says which checkpoint it was."""
    directory, step = find(path, which)
    restored = _manager(directory, create=False).restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )["state"]
    return restored["params"], restored.get("model_state", {}), f"{directory} step {step}"
