"""Discoverable keys: each key is declared once (fedln_jax/config_keys.py); `run --help` /
`sweep --help` and docs/config.md list every one with its type, default, allowed values and
meaning from that declaration; `fedln-jax config` prints the resolved config without running."""
import dataclasses
import json
import pathlib

import pytest

from fedln_jax import config_help, config_keys
from fedln_jax.cli import main
from fedln_jax.config import Config
from fedln_jax.config_help import key_rows

DOCS_PAGE = pathlib.Path(__file__).parent.parent / "docs" / "config.md"


def test_every_config_key_is_declared_once_with_a_help_line():
    fields = dataclasses.fields(Config)
    assert [f.name for f in fields] == list(config_keys.config_keys())
    assert all(f.metadata["key"].help.strip() for f in fields)
    assert Config.__dataclass_fields__.keys() == config_keys.ConfigKeys.__dataclass_fields__.keys()


def test_the_committed_docs_table_is_the_declarations():
    page = DOCS_PAGE.read_text()
    assert config_help.with_docs_table(page) == page, (
        "regenerate it: python -m fedln_jax.config_help docs/config.md")
    assert "| `client_chunk_size` | int\\|none | `none` | 1..2**31-1; at most" in page


def test_the_docs_table_is_regenerated_in_place_and_a_page_without_markers_is_refused(tmp_path):
    page = tmp_path / "config.md"
    page.write_text(f"# head\n{config_help.DOCS_BEGIN}\nstale\n{config_help.DOCS_END}\ntail\n")
    assert config_help.main([str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# head\n") and text.endswith("\ntail\n") and "stale" not in text
    assert config_help.docs_table() in text
    bare = tmp_path / "bare.md"
    bare.write_text("no table\n")
    with pytest.raises(ValueError, match="no `<!-- config keys"):
        config_help.main([str(bare)])
    assert bare.read_text() == "no table\n"


def _help(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["run", "sweep", "config"])
def test_help_lists_every_key_with_type_default_allowed_and_meaning(capsys, command):
    lines = _help(capsys, command).splitlines()
    for key, type_, default, allowed, meaning in key_rows():
        line = next((l for l in lines if l.split()[:1] == [key]), None)
        assert line is not None, key
        assert line.split()[1:3] == [type_, default] and meaning in line, line
        assert line.rstrip().endswith(f"; allowed: {allowed}" if allowed else meaning), line
    by_key = {row[0]: row for row in key_rows()}
    assert by_key["clients_per_round"][1:4] == ("int|none", "none", "1..num_clients")
    assert by_key["download"][1:3] == ("bool", "true") and by_key["lr"][1:4] == ("float", "0.01", "> 0")
    assert by_key["server_beta2"][3] == "[0, 1)" and by_key["fedrs_alpha"][3] == "(0, 1]"
    assert by_key["seed"][3] == "0..2**32-1" and by_key["norm"][3] == "none, bn, gn, ln, fn"


def test_config_prints_the_resolved_config_as_json_and_runs_nothing(tmp_path, capsys):
    path = tmp_path / "exp.py"
    path.write_text("def get_config():\n    return {'norm': 'ln', 'rounds': 7}\n")
    assert main(["config", "--config", str(path), "rounds=9", "conv_features=32/64"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == Config(norm="ln", rounds=9, conv_features="32/64").to_dict()
    assert main(["config"]) == 0
    assert json.loads(capsys.readouterr().out) == Config().to_dict()
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("overrides, fragment", [
    (["bogus=1"], "unknown config key"), (["conv_features=8"], "has 1 entries"),
    (["lr=0"], "lr must be > 0"),
    (["norm_layers=ln,ln,ln,foo"], "norm_layers='ln,ln,ln,foo' does not fit model small_cnn: "
                                   "unknown normalizer 'foo'; expected one of none, bn,"),
    (["norm_layers=ln,ln"], "it takes 4 comma-separated normalizers, each one of none, bn,"),
    (["norm_layers=gn3,none,none,none"], "3 groups do not divide the width 16"),
    (["norm=gn", "gn_groups=3"], "norm=gn with gn_groups=3 does not fit model small_cnn")])
def test_config_with_bad_input_is_one_error_line(capsys, overrides, fragment):
    assert main(["config", *overrides]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1 and err[0].startswith("error:") and fragment in err[0]
