"""One CLI style across the `dcr` commands: help, version, --config and --print-config everywhere."""

import pytest
import yaml

import dcr
from dcr.cli import main
from dcr.cli.commands import COMMANDS


def test_dcr_alone_prints_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert dcr.__version__ in capsys.readouterr().out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_print_config_reads_back_unchanged(command, tmp_path, capsys):
    """--print-config prints the resolved settings; fed back through --config it resolves to the same."""
    assert main([command, "--output-dir", str(tmp_path / "x"), "--print-config"]) == 0
    printed = capsys.readouterr().out
    settings = yaml.safe_load(printed)
    assert settings["output_dir"] == str(tmp_path / "x")
    (tmp_path / "c.yaml").write_text(printed)
    assert main([command, "--config", str(tmp_path / "c.yaml"), "--print-config"]) == 0
    assert capsys.readouterr().out == printed


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_is_grouped_by_topic_with_an_example(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "settings file:" in out and "--print-config" in out and "example: dcr " + command in out
    assert "--output-dir" in out
    assert "--progress" in out or command in AT_ONCE


AT_ONCE = {"plan"}  # commands that finish at once: no progress bar to switch off


def test_flags_override_the_file_and_lists_take_spaces_or_commas(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("steps: 7\nsources: [twins]\n")
    argv = ["refine", "--config", str(tmp_path / "c.yaml"), "--steps", "3", "--sources", "advbench,harmbench"]
    assert main([*argv, "--print-config"]) == 0
    settings = yaml.safe_load(capsys.readouterr().out)
    assert settings["steps"] == 3 and settings["sources"] == ["advbench", "harmbench"]
    assert main(["pipeline", "--seeds", "0", "1", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["seeds"] == [0, 1]


def test_refine_defaults_are_the_recommended_setting(capsys):
    assert main(["refine", "--print-config"]) == 0
    settings = yaml.safe_load(capsys.readouterr().out)
    assert settings["sources"] == ["twins"] and settings["center"] is True and settings["loss"] == "circle"
    assert settings["lr"] == 2e-5 and settings["layer"] == 0.5
