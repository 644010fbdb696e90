"""Help and shell completion: every command of cli/main.py has a one-line description, every option
says its default (and argparse lists its choices), and ``ringlab completion bash|zsh`` prints a
script generated from the parser."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest

from ringlab.cli.main import IN_PROCESS_COMMANDS, build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_the_in_process_commands_are_the_ones_cli_py_defines() -> None:
    commands = set(_subparsers(build_parser()).choices)
    assert set(IN_PROCESS_COMMANDS) <= commands
    assert {"demo", "run", "boot", "asm", "disasm", "bench", "isa", "completion"} == set(IN_PROCESS_COMMANDS)


@pytest.mark.parametrize("command", IN_PROCESS_COMMANDS)
def test_every_command_has_a_one_line_description(command: str) -> None:
    sub = _subparsers(build_parser())
    summary = {a.dest: a.help for a in sub._choices_actions}[command]
    assert summary and "\n" not in summary, command
    assert sub.choices[command].description, command


@pytest.mark.parametrize("command", IN_PROCESS_COMMANDS)
def test_every_option_of_a_command_says_its_default(command: str) -> None:
    parser = _subparsers(build_parser()).choices[command]
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0:
            continue  # positionals have no default; flags (--json, -h) are off unless given
        assert action.help, (command, action.option_strings)
        assert "default" in action.help, (command, action.option_strings, action.help)


@pytest.mark.parametrize("command", IN_PROCESS_COMMANDS)
def test_every_choice_shows_in_the_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _subparsers(build_parser()).choices[command]
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for action in parser._actions:
        for choice in action.choices or ():
            assert str(choice) in text, (command, action.dest, choice)


def test_the_global_debug_flag_is_documented(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--debug" in out and "RINGLAB_DEBUG=1" in out
    assert "demo" in out


def test_the_defaults_shown_are_the_defaults_used() -> None:
    from ringlab.cli.bench.speed import DEFAULT_ROUNDS

    parser = build_parser()
    args = parser.parse_args(["run", "p.s"])
    assert (args.technique, args.memory, args.max_instructions, args.guest_status) == (
        "native",
        4 << 20,
        None,
        False,
    )
    assert parser.parse_args(["bench"]).suite == "micro"
    bench_help = " ".join(_subparsers(parser).choices["bench"].format_help().split())
    assert f"(default: {DEFAULT_ROUNDS})" in bench_help
    assert "(default: micro)" in bench_help


# -- completion ------------------------------------------------------------------------------------------
def _completion(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


def test_completion_bash_is_a_valid_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "ringlab.bash"
    script.write_text(_completion("bash", capsys))
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


def _bash_complete(script: Path, *words: str) -> list[str]:
    """What bash offers for the last of ``words`` after ``ringlab``."""
    line = " ".join(("ringlab", *words))
    array = " ".join(f"'{w}'" for w in ("ringlab", *words))
    program = (
        f"source {script}; COMP_WORDS=({array}); COMP_CWORD={len(words)}; "
        f'COMP_LINE="{line}"; COMP_POINT={len(line)}; _shtab_ringlab; printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_completion_bash_completes_commands_options_and_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "ringlab.bash"
    script.write_text(_completion("bash", capsys))
    assert _bash_complete(script, "bo") == ["boot"]
    assert "--guest-status" in _bash_complete(script, "run", "--gu")
    assert _bash_complete(script, "boot", "--technique", "") == ["native", "trap-emulate", "bt", "pv", "hw"]
    assert "efficiency" in _bash_complete(script, "bench", "--suite", "")


def test_completion_zsh_is_a_compdef_script_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    script = _completion("zsh", capsys)
    assert script.startswith("#compdef ringlab")
    for command in IN_PROCESS_COMMANDS:
        assert command in script
    assert "--guest-status" in script


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_completion_zsh_is_a_valid_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "_ringlab"
    script.write_text(_completion("zsh", capsys))
    check = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


def test_completion_of_an_unknown_shell_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["completion", "fish"])
    assert exc.value.code == 2
