"""The CLI answers help and usage errors without importing JAX (docs/config.md#start-up)."""
import subprocess
import sys

import pytest

from fedln_jax import choices

PROBE = ("import sys\nfrom fedln_jax.cli import main\ntry:\n    main(sys.argv[1:])\n"
         "except SystemExit:\n    pass\nprint('jax imported' if 'jax' in sys.modules else "
         "'jax not imported')\n")


@pytest.mark.parametrize("argv", [
    ["--help"], ["demo", "--help"], ["bench", "--help"], ["analyze", "--help"],
    ["figure", "--help"], ["run", "--help"], ["sweep", "--help"], ["config", "--help"],
    ["results", "--help"], ["info", "--help"], [], ["nope"], ["run"], ["bench", "--model", "resnet"],
    ["bench", "--clients", "x"], ["demo", "--seeds", "300000000"], ["demo", "--rounds", "0"],
    ["analyze", "--workdir", "w", "--steps", "0"], ["analyze", "--workdir", "w", "--client", "-1"],
])
def test_help_and_usage_errors_do_not_import_jax(argv):
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True)
    assert proc.stdout.strip().splitlines()[-1] == "jax not imported", proc
    assert "Traceback" not in proc.stderr
    if argv and argv[-1] != "--help":
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), lines


def test_run_help_still_lists_the_config_keys(capsys):
    from fedln_jax.cli import main
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "client_chunk_size" in capsys.readouterr().out


def test_the_jax_free_choices_match_their_owners():
    from fedln_jax import models
    from fedln_jax.bench import speed as bench
    assert choices.NORM_PRESET_NAMES == tuple(models.NORM_PRESETS)
    assert models.DTYPES is choices.DTYPES
    assert bench.INPUT_SHAPES is choices.INPUT_SHAPES and bench.ENGINES is choices.ENGINES


def test_every_config_key_names_its_registrys_choices_in_its_order():
    """A key whose choices a registry owns declares the registry's names (config_keys.py),
    and once the registry is loaded validation reads the registry itself."""
    import importlib

    from fedln_jax import config_keys
    owned = [name for name in config_keys.config_keys() if config_keys.spec(name).owner]
    assert {"dataset", "partition", "augment", "model", "norm", "norm_position", "init",
            "conv_impl", "algorithm"} <= set(owned)
    for name in owned:
        spec = config_keys.spec(name)
        module, _, attribute = spec.owner.partition(":")
        registry = getattr(importlib.import_module(module), attribute)
        assert spec.choices == tuple(registry), name
        assert config_keys.allowed_values(name) == spec.also + tuple(registry), name


def test_the_package_names_load_on_first_use():
    import fedln_jax
    assert fedln_jax.Config().rounds == 60 and callable(fedln_jax.run)
    with pytest.raises(AttributeError):
        fedln_jax.no_such_name


def test_every_subcommand_has_one_handler():
    import argparse

    from fedln_jax import cli
    subcommands = next(a for a in cli.build_parser()._actions
                       if isinstance(a, argparse._SubParsersAction))
    assert set(subcommands.choices) == set(cli.HANDLERS)


def test_a_reader_that_leaves_the_pipe_gets_silence_not_an_error():
    """`fedln-jax config | head -1`: the reader is gone before the output is written."""
    child = subprocess.Popen([sys.executable, "-m", "fedln_jax.cli", "config"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141 and err == "", err
