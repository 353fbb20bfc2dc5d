"""Every command's --help: a description of whole sentences, a help text for every option with its default, and
`python -m src.run --help` naming --dry-run, the a..b seed ranges and the real groups and options of conf/."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CONF, ROOT, run_cli

ENTRY_POINTS = sorted(path.stem for path in (ROOT / "src").glob("*.py") if "def main(argv" in path.read_text())


def parser_of(module: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser `python -m src.<module>` builds, caught as it parses."""
    caught: list[argparse.ArgumentParser] = []

    def catch(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        caught.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(SystemExit):
        importlib.import_module(f"src.{module}").main(["--help"])
    return caught[0]


def with_subcommands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from with_subcommands(sub)


def test_every_entry_point_is_found() -> None:
    assert {"estimate", "compare", "report", "evaluate", "removal"} <= set(ENTRY_POINTS)


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_option_has_help_with_its_default_and_the_description_is_whole_sentences(
        module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = parser_of(module, monkeypatch)
    description = parser.description or ""
    assert description[:1].isupper() and description.endswith("."), description
    for each in with_subcommands(parser):
        formatter = each._get_formatter()
        for action in each._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help, f"{module} {each.prog}: {name} has no help"
            if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
                assert "default" in formatter._expand_help(action), f"{module}: {name} does not show its default"


def test_run_help_names_the_dry_run_seed_ranges_and_the_real_options(tmp_path: Path) -> None:
    result = run_cli("src.run", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--dry-run" in result.stdout and "seed=a..b" in result.stdout and "seed=0..63" in result.stdout
    assert "base_" not in result.stdout  # the schemas' ConfigStore names are not options
    for group in sorted(path for path in CONF.iterdir() if path.is_dir() and path.name != "hydra"):
        options = ", ".join(sorted(option.stem for option in group.glob("*.yaml")))
        assert f"\n{group.name}: {options}\n" in result.stdout
