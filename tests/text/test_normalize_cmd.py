import subprocess
import sys

from indextts_ray.cli import COMMANDS, main


def test_registered():
    assert COMMANDS["normalize"][0] == "indextts_ray.commands.normalize_cmd"


def test_normalize_command(capsys):
    assert main(["normalize", "사과 3개를 10:30에 샀다", "--language", "ko"]) == 0
    assert capsys.readouterr().out == "사과 세 개를 열 시 삼십 분에 샀다\n"


def test_normalize_command_detects_language(capsys):
    assert main(["normalize", "It costs $3.50", "--show-language"]) == 0
    assert capsys.readouterr().out == "en\tIt costs three dollars and fifty cents\n"


def test_normalize_command_stdin():
    r = subprocess.run(
        [sys.executable, "-m", "indextts_ray.cli", "normalize", "-", "--language", "ko"],
        input="2026년 6월\n010-1234-5678\n", capture_output=True, text=True, encoding="utf-8",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "이천이십육 년 유월\n공일공 일이삼사 오육칠팔\n"
