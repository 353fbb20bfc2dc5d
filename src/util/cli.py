"""Command-line plumbing shared by every entry point: one-line errors and exit codes, seed lists."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from src.errors import ConfigError, MeminfError

USER_ERROR = 2
INTERRUPTED = 130


def one_line(text: str) -> str:
    """Whitespace (newlines included) collapsed: a message fit for one `error:` line."""
    return " ".join(str(text).split())


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def cli_exit_code(run: Callable[[], None]) -> int:
    """Run a command: 0, or 2 after one `error:` line for bad input or a file that cannot be read/written."""
    try:
        run()
    except (MeminfError, OSError) as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return USER_ERROR
    return 0


def cli_main(parse: Callable[[list[str] | None], Any], run: Callable[[Any], None], argv: list[str] | None) -> int:
    """A command's main: parse the arguments (argparse exits 2 itself on bad options), run, exit code."""
    args = parse(argv)
    return cli_exit_code(lambda: run(args))


def parse_seeds(spec: str, option: str = "seeds") -> list[int]:
    """`a..b` (inclusive), single seeds, comma-separated: '0..3,7' -> [0, 1, 2, 3, 7], in the order given;
    a seed named twice or a reversed range is an error."""
    seeds: list[int] = []
    for item in spec.split(","):
        first, dots, last = item.strip().partition("..")
        try:
            low, high = int(first), int(last if dots else first)
        except ValueError as err:
            raise ConfigError(f"{option} {spec!r} is not a seed list; use e.g. 0..63 or 1,5,9..12") from err
        if high < low:
            raise ConfigError(f"{option} {spec!r}: the range {item.strip()} is empty; ranges are inclusive and go "
                              f"up, e.g. {high}..{low}")
        seeds += range(low, high + 1)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{option} {spec!r} names a seed twice; give each seed once")
    return seeds
