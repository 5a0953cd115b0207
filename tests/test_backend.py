"""cnnjax.backend: the XLA flags set on import."""

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from cnnjax import backend, models, train
from cnnjax.backend import CPU_FLAGS, apply_xla_flags
from cnnjax.config import base_config


def test_flags_are_appended_to_the_users_own():
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert apply_xla_flags(environ) == CPU_FLAGS
    assert environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", *CPU_FLAGS]


def test_a_flag_the_user_set_wins_and_the_opt_out_adds_nothing():
    name = CPU_FLAGS[0].split("=")[0]
    environ = {"XLA_FLAGS": f"{name}=individual_dot"}
    assert apply_xla_flags(environ) == ()
    assert environ["XLA_FLAGS"] == f"{name}=individual_dot"
    opted_out = {"CNNJAX_XLA_FLAGS": "0"}
    assert apply_xla_flags(opted_out) == () and "XLA_FLAGS" not in opted_out


def test_importing_cnnjax_keeps_ynnpack_for_matrix_products_only():
    program = (
        "import jax, jax.numpy as jnp, cnnjax\n"
        "a = jnp.ones((256, 256))\n"
        "uses_ynn = lambda f, *args: 'ynn' in jax.jit(f).lower(*args).compile().as_text()\n"
        "print(uses_ynn(jnp.matmul, a, a), uses_ynn(lambda a: a.sum(0), a))\n"
    )
    env = {"PATH": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]
    env["CNNJAX_XLA_FLAGS"] = "0"  # XLA's default: YNNPACK for the reduction too
    out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_compilation_cache_directory_follows_the_environment(tmp_path):
    assert backend.compilation_cache_dir({"CNNJAX_COMPILATION_CACHE": str(tmp_path)}) == tmp_path
    assert backend.compilation_cache_dir({"CNNJAX_COMPILATION_CACHE": "0"}) is None
    assert backend.compilation_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "cnnjax" / "xla"


def test_a_second_process_loads_its_compiled_programs_from_the_cache(tmp_path):
    program = (
        "import cnnjax.backend, jax, jax.numpy as jnp\n"
        "print(cnnjax.backend.enable_compilation_cache())\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"  # these compile in milliseconds
        "f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0))\n"
        "for n in range(40, 48): f(jnp.ones((n, n))).block_until_ready()\n"
    )
    env = {"PATH": "", "JAX_PLATFORMS": "cpu", "CNNJAX_COMPILATION_CACHE": str(tmp_path / "xla")}
    run = lambda: subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True)  # noqa: E731
    assert run().stdout.strip() == str(tmp_path / "xla")
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "xla").iterdir()}
    assert len([name for name in written if name.startswith("jit__lambda")]) == 8
    run()
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "xla").iterdir()} == written  # read, none rewritten
    env["CNNJAX_COMPILATION_CACHE"] = "0"
    assert run().stdout.strip() == "None"


def compiled_train_step(model, image_shape, **train_settings) -> str:
    """The optimized HLO text of the train step that ``compiled_steps`` builds with ``config.train`` settings."""
    config = base_config()
    config.train.update(train_settings)
    optimizer, _, step, _, _ = train.compiled_steps(config, model, 1)
    state = train.init_state(model, optimizer, image_shape, jax.random.key(0))
    images, labels = jnp.zeros((8, *image_shape)), jnp.zeros(8, jnp.int32)
    with jax.numpy_dtype_promotion("standard"):  # Optax's internals (see test_train)
        return step.lower(state, images, labels, jnp.arange(4), jax.random.key(1)).compile().as_text()


def ynn_fusions_in_train_step(ynn_fusion: str) -> int:
    model = models.get("lenet", filters=(2, 4), hidden=(8,))
    return compiled_train_step(model, (28, 28, 1), xla_cpu_ynn_fusion=ynn_fusion).count("ynn_fusion")


def test_a_configs_ynn_fusion_types_reach_its_compiled_steps():
    # with elementwise ops and reductions as well, many more operations become YNNPACK fusions
    assert ynn_fusions_in_train_step("dot,eltwise,reduce") > ynn_fusions_in_train_step("individual_dot") > 0


def test_without_cse_batch_norm_broadcasts_join_the_ynnpack_fusions():
    def activation_sized_broadcasts(cse: bool) -> int:
        text = compiled_train_step(
            models.get("resnet", depth=8), (16, 16, 3), xla_cpu_ynn_fusion="dot,eltwise,reduce", xla_cpu_cse=cse
        )
        return len(re.findall(r"%wrapped_broadcast[.\d]* = f32\[4,\d+,\d+,\d+\]", text))  # a batch (4, H, W, C)

    # with CSE, each batch norm's scale broadcast is shared by its forward and backward passes and written out
    assert activation_sized_broadcasts(cse=True) >= 7 > activation_sized_broadcasts(cse=False)
    assert backend.XlaOptions("", cse=False).compiler_options() == {"xla_disable_hlo_passes": "cse"}


def test_unknown_ynn_fusion_types_are_rejected_naming_the_key():
    config = base_config()
    config.train.xla_cpu_ynn_fusion = "dot,conv"
    with pytest.raises(ValueError, match=r"xla_cpu_ynn_fusion=.*\['conv'\]"):
        train.check_config(config)
    assert backend.XlaOptions().compiler_options() == {}


def test_gpu_programs_use_deterministic_ops_unless_the_config_turns_them_off(monkeypatch):
    """On a GPU a resume is bitwise identical only with XLA:GPU's deterministic operations (checked on an H100)."""
    config = base_config()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    options = backend.XlaOptions.of(config.train).compiler_options()
    assert options == {"xla_gpu_deterministic_ops": True}
    config.train.xla_gpu_deterministic = False
    assert backend.XlaOptions.of(config.train).compiler_options() == {}
    monkeypatch.undo()
    # XLA knows the option by this name (a misspelt one is an error) and the CPU compiler accepts it
    assert jax.jit(lambda x: 2 * x, compiler_options=options)(1.0) == 2.0
