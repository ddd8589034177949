"""Discoverable keys: `run --help` / `sweep --help` list every Config field with its type,
default and meaning; `fedln-jax config` prints the resolved config without running."""
import dataclasses
import json
import pathlib

import pytest

from fedln_jax import config_help
from fedln_jax.cli import main
from fedln_jax.config import Config
from fedln_jax.config_help import MEANINGS, key_rows, keys_help


def test_every_config_field_has_a_meaning_and_nothing_else_does():
    fields = [f.name for f in dataclasses.fields(Config)]
    assert sorted(MEANINGS) == sorted(fields)
    assert all(MEANINGS[k].strip() for k in fields)


def test_the_packaged_key_table_is_the_config_classs():
    """The CLI prints config_keys.txt (no JAX at --help); it must be what Config says now."""
    packaged = (pathlib.Path(config_help.__file__).parent / "config_keys.txt").read_text()
    assert packaged.rstrip("\n") == keys_help(), (
        "regenerate it: python -m fedln_jax.config_help > fedln_jax/config_keys.txt")


def _help(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["run", "sweep", "config"])
def test_help_lists_every_key_with_type_default_and_meaning(capsys, command):
    lines = _help(capsys, command).splitlines()
    for key, type_, default, meaning in key_rows():
        line = next((l for l in lines if l.split()[:1] == [key]), None)
        assert line is not None, key
        assert line.split()[1:3] == [type_, default] and line.rstrip().endswith(meaning), line
    by_key = {row[0]: row for row in key_rows()}
    assert by_key["clients_per_round"][1:3] == ("int|none", "none")
    assert by_key["download"][1:3] == ("bool", "true") and by_key["lr"][1:3] == ("float", "0.01")


def test_config_prints_the_resolved_config_as_json_and_runs_nothing(tmp_path, capsys):
    path = tmp_path / "exp.py"
    path.write_text("def get_config():\n    return {'norm': 'ln', 'rounds': 7}\n")
    assert main(["config", "--config", str(path), "rounds=9", "conv_features=32/64"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == Config(norm="ln", rounds=9, conv_features="32/64").to_dict()
    assert main(["config"]) == 0
    assert json.loads(capsys.readouterr().out) == Config().to_dict()
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("overrides, fragment", [(["bogus=1"], "unknown config key"),
                                                 (["conv_features=8"], "has 1 entries"),
                                                 (["lr=0"], "lr must be > 0")])
def test_config_with_bad_input_is_one_error_line(capsys, overrides, fragment):
    assert main(["config", *overrides]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1 and err[0].startswith("error:") and fragment in err[0]
