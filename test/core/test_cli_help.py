"""`--help` of every command: the top level through the installed `cmirl` entry point, and every
subcommand and sub-subcommand found by walking the argparse tree (new commands are covered as added)."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmirl_ros.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += _command_paths(sub, prefix + (name,))
    return paths


COMMANDS = _command_paths(build_parser())


def _cmirl_entry_point() -> str:
    beside_python = Path(sys.executable).parent / "cmirl"
    found = str(beside_python) if beside_python.is_file() else shutil.which("cmirl")
    if found is None:
        pytest.skip("the `cmirl` entry point is not installed (make setup)")
    return found


def test_the_tree_holds_every_command_and_nested_command():
    assert len(COMMANDS) > 10 and ("map", "build") in COMMANDS and ("eval",) in COMMANDS


def test_top_level_help_through_the_real_entry_point():
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([_cmirl_entry_point(), "--help"], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "usage: cmirl" in done.stdout and "Recall@1%" in done.stdout and done.stderr == ""


@pytest.mark.parametrize("command", COMMANDS, ids=lambda path: " ".join(path) or "cmirl")
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: cmirl")
