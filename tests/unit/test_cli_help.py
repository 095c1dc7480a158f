"""Every command's ``--help`` renders: argparse formats help strings with ``%``, so a literal percent
sign in a help text (``95 % intervals``) crashes ``edgeseg --help`` unless it is written ``%%``."""

from __future__ import annotations

import argparse

import pytest

from edgeseg.cli.main import build_parser


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, (*path, name))
    return found


COMMANDS = _parsers(build_parser())


def test_the_command_tree_is_walked():
    assert ("report",) in COMMANDS and ("search", "run") in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "edgeseg")
def test_help_renders(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "--help" in out
