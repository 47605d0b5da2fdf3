import subprocess
import sys

import pytest

from indextts_ray.cli import COMMANDS, build_subparser, main


def test_top_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_subcommand_has_help_with_examples(name):
    parser, module = build_subparser(name)
    text = parser.format_help()
    assert "examples:" in text and module.EXAMPLES and all(e.startswith("indextts-ray ") for e in module.EXAMPLES)


def test_user_error_exits_2_with_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "indextts_ray.cli", "config", str(tmp_path / "missing.yaml")],
        capture_output=True, text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: config file not found")
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "indextts_ray.cli", "--debug", "config", str(tmp_path / "missing.yaml")],
        capture_output=True, text=True,
    )
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_unknown_subcommand_is_usage_error():
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2


def test_config_command_prints_hash(capsys, repo):
    assert main(["config", str(repo / "configs/model/tiny.yaml"), "--check"]) == 0
    assert capsys.readouterr().out.startswith("# config_hash: ")
