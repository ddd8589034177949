"""The persistent compilation cache: where it goes, the off switch, an unwritable directory."""
import os
import subprocess
import sys

from fedln_jax.cli import main
from fedln_jax.runtime import compile_cache


def test_the_flag_beats_the_variable_beats_the_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.resolve_cache_dir() == str(tmp_path / "xdg" / "fedln_jax" / "jax")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache.resolve_cache_dir() == str(tmp_path / "home" / ".cache" / "fedln_jax" / "jax")
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "env"))
    assert compile_cache.resolve_cache_dir() == str(tmp_path / "env")
    assert compile_cache.resolve_cache_dir(str(tmp_path / "flag")) == str(tmp_path / "flag")
    assert compile_cache.resolve_cache_dir("off") is None
    monkeypatch.setenv(compile_cache.ENV_VAR, "OFF")
    assert compile_cache.resolve_cache_dir() is None
    assert compile_cache.resolve_cache_dir(str(tmp_path / "flag")) == str(tmp_path / "flag")


def test_an_unwritable_cache_dir_warns_once_and_leaves_the_cache_off(tmp_path):
    import jax
    blocker = tmp_path / "a_file"
    blocker.write_text("")   # a directory cannot be made below a file (also as root)
    before = jax.config.jax_compilation_cache_dir
    warnings = []
    assert compile_cache.enable(str(blocker / "cache"), warn=warnings.append) is None
    assert len(warnings) == 1 and warnings[0].startswith("warning:")
    assert "running without the cache" in warnings[0] and "\n" not in warnings[0]
    assert jax.config.jax_compilation_cache_dir == before


def test_every_compiling_command_turns_the_cache_on_first_and_bench_does_not(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(compile_cache, "enable", lambda flag=None, warn=None: calls.append(flag))
    for argv in (["run", "--workdir", "w", "--cache-dir", "D", "bogus=1"],
                 ["sweep", "--workdir", "w", "bogus=1,2"],
                 ["figure", "--config", "missing.py", "--workdir", "w", "--cache-dir", "off"]):
        assert main(argv) == 2
    assert calls == ["D", None, "off"]
    assert main(["bench", "--clients", "0"]) == 2 and len(calls) == 3
    capsys.readouterr()


def test_enable_points_jax_at_the_dir_and_programs_are_written_there(tmp_path):
    # a fresh process: JAX reads the cache setting at its first compilation
    cache = tmp_path / "cache"
    env = dict(os.environ, FEDLN_JAX_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    code = ("from fedln_jax.runtime import compile_cache; import jax, jax.numpy as jnp; "
            "print(compile_cache.enable()); jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(cache)
    assert any(name.startswith("jit_") for name in os.listdir(cache)), os.listdir(cache)
