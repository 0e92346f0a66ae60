"""Messages a newcomer meets (issue 29, section 3): each says what to do next."""

from __future__ import annotations

import json
import sys

import pytest

from vlret.cli import main
from vlret.cli.common import vlret_command
from vlret.errors import ConfigError, DataError
from vlret.index import Searcher
from vlret.train import load_recipe


def test_a_typo_in_an_override_names_the_command_line_and_one_in_a_file_the_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_recipe("demo_tiny", ["train.bach_size=4", "output_dir=runs/x"])
    assert str(info.value).startswith(
        "the command line (train.bach_size=4 output_dir=runs/x): train: unknown key"
    )
    with pytest.raises(ConfigError, match=r"^the command line .*train.batch_size: expected int"):
        load_recipe("demo_tiny", ["train.batch_size=abc"])
    bad = tmp_path / "r.yaml"
    bad.write_text("train: {bach_size: 4}\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: train: unknown key 'bach_size'"):
        load_recipe(bad, ["output_dir=runs/x"])  # the file's own mistake, with a good override


def test_a_folder_that_is_not_an_index_says_how_to_build_one(tmp_path):
    with pytest.raises(ConfigError, match="build one with vlret index build"):
        Searcher(tmp_path)


def test_a_bad_image_under_raise_points_to_on_error_skip(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "t.csv").write_text("image,caption\nimages/broken.png,a thing\n")
    from vlret.data import load_dataset
    from vlret.data.images import check_media

    with pytest.raises(DataError, match="cannot decode image .*--on-error skip"):
        check_media(load_dataset(tmp_path / "t.csv"))


def test_data_stats_prints_a_table_and_json_on_request(synth_data, capsys):
    assert main(["data", "stats", str(synth_data)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2] == "| split | items | captions | captions per item | words per caption |"
    rows = {line.split("|")[1].strip(): line for line in table[4:]}
    assert set(rows) == {"train", "val", "test"} and "| 5: " in rows["test"]
    assert main(["data", "stats", str(synth_data), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["splits"]["test"]["captions"] == 5 * stats["splits"]["test"]["items"]


def test_printed_commands_work_without_activating_the_environment(tmp_path, monkeypatch):
    program = tmp_path / "venv" / "bin" / "vlret"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(program)])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert vlret_command() == "venv/bin/vlret"  # not on PATH: the path of the program that ran
    monkeypatch.setenv("PATH", str(program.parent))
    program.chmod(0o755)
    assert vlret_command() == "vlret"  # on PATH: its name
