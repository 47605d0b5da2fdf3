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


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_traceback_and_keeps_exit_code_2(tmp_path, where):
    args = ["config", str(tmp_path / "missing.yaml")]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    r = subprocess.run([sys.executable, "-m", "indextts_ray.cli", *args], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: config file not found")


def test_usage_error_is_one_line():
    r = subprocess.run([sys.executable, "-m", "indextts_ray.cli", "pipeline", "run"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error: indextts-ray pipeline: the following arguments are required: --config")


def test_overrides_after_options_and_global_flags_after_subcommand(capsys, repo):
    import logging

    assert main(["config", str(repo / "configs/model/tiny.yaml"), "--check", "heads=4", "-q"]) == 0
    assert capsys.readouterr().out.startswith("# config_hash: ")
    assert logging.getLogger().level == logging.WARNING
    # the example from `pipeline --help`: an override after --until
    args, _ = build_subparser("pipeline")
    ns = args.parse_intermixed_args(["run", "--config", "x.yaml", "--until", "stage1", "pipeline.work_dir=/tmp/d"])
    assert ns.action == "run" and ns.until == "stage1" and ns.overrides == ["pipeline.work_dir=/tmp/d"]
    assert main(["pipeline", "status", "--config", str(repo / "configs/pipeline/demo.yaml"), "--until", "stage1",
                 "pipeline.work_dir=/nonexistent/indextts-cli-test", "-v"]) == 0
    assert logging.getLogger().level == logging.DEBUG


def test_verbose_and_quiet_exclude_each_other():
    with pytest.raises(SystemExit) as e:
        main(["config", "x.yaml", "-v", "-q"])
    assert e.value.code == 2


def test_unknown_subcommand_is_usage_error():
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2


def test_config_command_prints_hash(capsys, repo):
    assert main(["config", str(repo / "configs/model/tiny.yaml"), "--check"]) == 0
    assert capsys.readouterr().out.startswith("# config_hash: ")
