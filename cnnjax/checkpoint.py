"""Orbax checkpoints of a run: the last K periodic ones and the best one, atomic, verified, resumable.

Orbax writes each checkpoint into a temporary directory and renames it when complete (and removes leftovers of an
interrupted or failed write at start-up), so a kill or a full disk at any moment leaves the previous checkpoints
intact. Each checkpoint's
``checksums.json`` (every file's size and BLAKE2 hash, written after it) lets a checkpoint damaged on disk be
recognized before Orbax reads it. Restoring tries the newest checkpoint first; one that cannot be read is renamed
``<step>.corrupt`` (never deleted) with a warning, and the next older one is tried.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from cnnjax import metrics, preemption, rundir

CHECKSUMS = "checksums.json"
COPYING = ".copying"  # the suffix of a checkpoint being copied


class CorruptCheckpoint(Exception):
    """A checkpoint whose files do not match their checksums or cannot be read; the message says why."""


def _manager(path: Path, **options) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, **options)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(path.absolute(), options=options, item_handlers=handlers)


def _shapes(tree) -> dict[str, tuple]:
    """{'params/conv1/kernel': shape, ...} for comparing architectures."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


def file_checksums(step_dir: Path) -> dict[str, list]:
    """{relative path: [size in bytes, BLAKE2b hex digest]} of every file of one checkpoint but the checksums."""
    sums = {}
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUMS):
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        sums[str(path.relative_to(step_dir))] = [path.stat().st_size, digest.hexdigest()]
    return sums


def verify(step_dir: Path) -> None:
    """Raises CorruptCheckpoint naming the first file that is missing or differs from ``checksums.json``. A
    checkpoint without the file (a write interrupted just before it) is left to Orbax to judge."""
    path = step_dir / CHECKSUMS
    if not path.exists():
        return
    try:
        expected = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CorruptCheckpoint(f"{CHECKSUMS} cannot be read ({error})") from None
    actual = file_checksums(step_dir)
    for name, (size, digest) in expected.items():
        if name not in actual:
            raise CorruptCheckpoint(f"{name} is missing")
        if actual[name][0] != size:
            raise CorruptCheckpoint(f"{name} has {actual[name][0]} bytes, {size} were written")
        if actual[name][1] != digest:
            raise CorruptCheckpoint(f"{name} does not match its checksum")


def copy_checkpoint(source: Path, target: Path) -> None:
    """Copies the checkpoint ``source`` to ``target`` through a temporary directory verified against the checksums
    and renamed when complete, so a kill or a full disk leaves either no ``target`` or a whole one. The copy costs a
    fraction of an Orbax save (its tensorstore and metadata setup), and stays readable when ``source`` is damaged."""
    temporary = target.with_name(target.name + COPYING)
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        shutil.copytree(source, temporary)
        verify(temporary)
        os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def move_aside(step_dir: Path) -> Path:
    """Renames a damaged checkpoint to ``<step>.corrupt`` (``.corrupt-2``, ... if taken); returns the new path."""
    target, n = step_dir.with_name(step_dir.name + ".corrupt"), 1
    while target.exists():
        n += 1
        target = step_dir.with_name(f"{step_dir.name}.corrupt-{n}")
    os.replace(step_dir, target)
    return target


def _nbytes(tree) -> int:
    return sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree_util.tree_leaves(tree))


class Checkpoints:
    """``directory/periodic`` keeps the last ``keep`` states, ``directory/best`` the best one. Each checkpoint holds
    the training state (a pytree) and a JSON dict of loop bookkeeping (``meta``)."""

    def __init__(self, directory: str | Path, keep: int):
        self.directory = Path(directory)
        self.keep = keep
        self.periodic = self._manager(self.directory / "periodic", keep)
        self.best = self._manager(self.directory / "best", 1)
        for leftover in (self.directory / "periodic").glob(f"*{COPYING}"):  # a copy interrupted by a kill
            shutil.rmtree(leftover)

    @staticmethod
    def _manager(path: Path, keep: int) -> ocp.CheckpointManager:
        return _manager(path, max_to_keep=keep, cleanup_tmp_directories=True, create=True)

    @staticmethod
    def _save(manager: ocp.CheckpointManager, step: int, state, meta: dict, copy: tuple | None = None) -> None:
        """``copy``: (finished checkpoint, how many of ``manager``'s to keep) to copy instead of writing ``state``."""
        if step in manager.all_steps():  # re-reached after a resume: the content is the same by determinism
            return
        directory = Path(manager.directory)
        with preemption.checkpoint_write():
            Checkpoints._write(manager, directory, step, state, meta, copy)

    @staticmethod
    def _write(manager, directory: Path, step: int, state, meta: dict, copy: tuple | None) -> None:
        try:
            if copy is not None:
                source, keep = copy
                copy_checkpoint(source, directory / str(step))
                for old in sorted([*manager.all_steps(), step])[:-keep]:
                    shutil.rmtree(directory / str(old))
                manager.reload()
                return
            manager.save(
                step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
            )
            if jax.process_index() == 0:
                metrics.write_json(directory / str(step) / CHECKSUMS, file_checksums(directory / str(step)))
        except Exception as error:
            if not isinstance(error, OSError) and not rundir.is_disk_full(error):
                raise
            manager.reload()
            latest = manager.latest_step()
            intact = "no earlier checkpoint was written" if latest is None else f"checkpoint step {latest} is intact"
            raise rundir.write_error(error, directory, f"checkpoint step {step}", _nbytes(state), intact) from None

    def save(self, step: int, state, meta: dict) -> None:
        """Writes periodic checkpoint ``step``; as a copy of the best one where that was just written from the same
        ``state`` and ``meta`` (a single process: each process of a multi-host run writes its own shards)."""
        best = Path(self.best.directory) / str(step)
        copy = (best, self.keep) if jax.process_count() == 1 and step in self.best.all_steps() else None
        self._save(self.periodic, step, state, meta, copy)

    def save_best(self, step: int, state, meta: dict) -> None:
        """Writes the best checkpoint; :meth:`save` of the same step and ``meta`` afterwards copies it."""
        self._save(self.best, step, state, meta)

    def latest_step(self) -> int | None:
        return self.periodic.latest_step()

    @staticmethod
    def _read(manager: ocp.CheckpointManager, step: int, like):
        """(state, meta) of checkpoint ``step``. Raises CorruptCheckpoint when its files are damaged, and a
        ValueError when it was written by another architecture or optimizer (or its metadata is damaged so that it
        looks like one: :meth:`_restore_newest` tells the two apart)."""
        verify(Path(manager.directory) / str(step))
        try:
            saved = _shapes(manager.item_metadata(step)["state"].tree["params"])
        except Exception as error:  # noqa: BLE001 - any failure to read a checkpoint's metadata is damage
            raise CorruptCheckpoint(
                f"its metadata cannot be read ({type(error).__name__}: {str(error)[:200]})"
            ) from None
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
        except Exception as error:  # noqa: BLE001 - tensorstore's and the filesystem's errors: damage
            raise CorruptCheckpoint(f"{type(error).__name__}: {str(error)[:200]}") from None
        return restored["state"], restored["meta"]

    def _restore_newest(self, manager: ocp.CheckpointManager, like, at_most: int | None = None):
        """(step, state, meta) of the newest readable checkpoint (of those <= ``at_most``), or None if there is none.

        Damaged files are certain damage: the checkpoint is moved aside at once. A checkpoint that reads as another
        architecture or optimizer is damaged if an older one of the same run reads correctly (it is then moved
        aside); if none does, the run's config has changed and its ValueError is raised, moving nothing.
        """
        mismatched = []
        for step in sorted((s for s in manager.all_steps() if at_most is None or s <= at_most), reverse=True):
            step_dir = Path(manager.directory) / str(step)
            try:
                state, meta = self._read(manager, step, like)
            except CorruptCheckpoint as error:
                metrics.log_line(f"warning: checkpoint step {step} in {manager.directory} cannot be read ({error}); "
                                 f"moved to {move_aside(step_dir).name}, trying the previous one")  # fmt: skip
                manager.reload()
                continue
            except ValueError as error:
                mismatched.append((step_dir, error))
                continue
            for damaged, error in mismatched:
                metrics.log_line(f"warning: checkpoint {damaged.name} in {manager.directory} cannot be read "
                                 f"({error}); moved to {move_aside(damaged).name}")  # fmt: skip
            if mismatched:
                manager.reload()
            return step, state, meta
        if mismatched:
            raise mismatched[0][1]
        return None

    def restore_latest(self, like, at_most: int | None = None):
        """(step, state, meta) of the newest readable periodic checkpoint (<= ``at_most`` if given), shaped like
        ``like``, or None for a new run. Raises a ValueError naming the directory when checkpoints exist but none
        can be read, or when they belong to another architecture or optimizer."""
        had_checkpoints = bool(self.periodic.all_steps())
        restored = self._restore_newest(self.periodic, like, at_most)
        if restored is None and had_checkpoints and at_most is None:
            raise rundir.RunDirectoryError(
                f"no checkpoint in {self.periodic.directory} can be read (each was moved aside as *.corrupt); "
                "run the same command again to train this run from the start, or use another --workdir"
            )
        return restored

    def restore(self, step: int, like):
        """(state, meta) of periodic checkpoint ``step``, shaped like ``like``; a different architecture is a clear
        ValueError, damaged files a CorruptCheckpoint."""
        return self._read(self.periodic, step, like)

    def restore_best(self, like):
        """(state, meta) of the best checkpoint, or None if there is none or it cannot be read (moved aside with a
        warning: the caller falls back to a periodic checkpoint)."""
        restored = self._restore_newest(self.best, like)
        return None if restored is None else restored[1:]

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
    and without writing anything there (the weights the run evaluated: see ``train.evaluated``);
    ``where`` says which checkpoint it was. Damaged files are a ValueError
    naming the checkpoint."""
    directory, step = find(path, which)
    try:
        verify(directory / str(step))
    except CorruptCheckpoint as error:
        raise ValueError(
            f"checkpoint step {step} in {directory} is damaged ({error}); use another checkpoint"
        ) from None
    restored = _manager(directory, create=False).restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )["state"]
    if "ema" in restored:  # a run with train.ema_decay is used through its moving average
        restored = restored["ema"]
    elif "slow" in restored:  # one with optim.lookahead through its slow weights
        restored = {**restored, "params": restored["slow"]}
    return restored["params"], restored.get("model_state", {}), f"{directory} step {step}"
