"""cnnjax.checkpoint: round trips, keeping the last K, architecture mismatches, reading a donor's weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import checkpoint


def test_checkpoint_round_trip_and_architecture_mismatch(tmp_path):
    state = {"step": jnp.array(7, jnp.int32), "params": {"conv1": {"kernel": jnp.arange(6.0).reshape(1, 1, 2, 3)}},
             "opt_state": (jnp.ones(2),)}  # fmt: skip
    manager = checkpoint.Checkpoints(tmp_path, keep=2)
    for step in (1, 2, 3):
        manager.save(step, state, {"best": step})
    assert manager.periodic.all_steps() == [2, 3]  # keeps the last K
    restored, meta = manager.restore(3, state)
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, state)
    assert meta == {"best": 3}
    other = {**state, "params": {"conv1": {"kernel": jnp.zeros((1, 1, 2, 4))}}}
    with pytest.raises(ValueError, match=r"different architecture .*conv1.*kernel.*checkpoint \(1, 1, 2, 3\) vs model "
                                         r"\(1, 1, 2, 4\).*new --workdir"):  # fmt: skip
        manager.restore(3, other)
    manager.close()


def test_the_periodic_checkpoint_of_a_best_step_is_its_verified_copy_and_keeps_the_last_k(tmp_path):
    manager = checkpoint.Checkpoints(tmp_path, keep=2)
    for step in (1, 2, 3):
        state = {"step": jnp.array(step), "params": {"dense": {"kernel": jnp.full((2, 3), float(step))}}}
        manager.save_best(step, state, {"best": step})
        manager.save(step, state, {"best": step})
    assert manager.periodic.all_steps() == [2, 3] and manager.best.all_steps() == [3]
    assert checkpoint.file_checksums(tmp_path / "periodic" / "3") == checkpoint.file_checksums(tmp_path / "best" / "3")
    checkpoint.verify(tmp_path / "periodic" / "3")
    restored, meta = manager.restore(3, state)
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, state)
    assert meta == {"best": 3}
    (tmp_path / "periodic" / ("4" + checkpoint.COPYING)).mkdir()  # a copy killed half-way
    again = checkpoint.Checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in (tmp_path / "periodic").iterdir()) == ["2", "3"]
    assert again.restore_latest(state)[0] == 3
    manager.close()
    again.close()


def test_find_names_best_then_latest_and_read_variables_needs_no_template(tmp_path):
    state = {"step": jnp.array(1, jnp.int32), "params": {"dense": {"kernel": jnp.ones((2, 3))}}, "model_state": {}}
    manager = checkpoint.Checkpoints(tmp_path / "run" / "checkpoints", keep=2)
    manager.save(4, state, {})
    assert checkpoint.find(tmp_path / "run") == (tmp_path / "run" / "checkpoints" / "periodic", 4)
    manager.save_best(2, {**state, "params": {"dense": {"kernel": jnp.zeros((2, 3))}}}, {})
    manager.close()
    assert checkpoint.find(tmp_path / "run")[1] == 2 and checkpoint.find(tmp_path / "run", "last")[1] == 4
    assert checkpoint.find(tmp_path / "run" / "checkpoints" / "periodic" / "4")[1] == 4
    params, model_state, where = checkpoint.read_variables(tmp_path / "run")
    np.testing.assert_array_equal(params["dense"]["kernel"], np.zeros((2, 3)))
    assert "best step 2" in where
    with pytest.raises(ValueError, match="holds no finished checkpoint"):
        checkpoint.find(tmp_path)
