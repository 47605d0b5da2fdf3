"""The README's two commands are the project's contract: keep them and .ci/run in sync."""

import re

from indextts_ray.cli import COMMANDS


def _readme_commands(repo):
    text = (repo / "README.md").read_text()
    block = re.search(r"<!-- quickstart -->\s*```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_has_exactly_two_commands(repo):
    cmds = _readme_commands(repo)
    assert len(cmds) == 2, cmds


def test_ci_runs_the_readme_test_command(repo):
    test_cmd = _readme_commands(repo)[1]
    ci_lines = [ln.strip() for ln in (repo / ".ci/run").read_text().splitlines()
                if ln.strip() and not ln.startswith("#") and not ln.startswith(("set ", "cd "))]
    assert ci_lines == [test_cmd]


def test_readme_cli_reference_mentions_every_subcommand(repo):
    text = (repo / "README.md").read_text()
    for name in COMMANDS:
        assert f"indextts-ray {name}" in text, name
