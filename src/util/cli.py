"""Command-line plumbing shared by every entry point: one-line errors and exit codes, seed lists."""

from __future__ import annotations

import argparse
import contextlib
import errno
import re
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType
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


def os_error_line(err: OSError) -> str:
    """An OSError as what could not be done and what to do: the file named without a writer's temp suffix."""
    path = TEMP_SUFFIX.sub("", str(err.filename)) if err.filename else None
    if path is None:
        return one_line(str(err))
    if err.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"{path} is a file where a folder is needed; write elsewhere (--out, or paths.output_dir for src.run)"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot access {path} ({err.strerror}); fix its permissions or write elsewhere (--out, or "
                "paths.output_dir for src.run)")
    if err.errno == errno.ENOSPC:
        return f"cannot write {path}: no space left on the device; free disk space and rerun"
    return f"{path}: {err.strerror or one_line(str(err))}"


TEMP_SUFFIX = re.compile(r"\.tmp\.[^/]*$")  # src/contracts/io.py names a temp file <name>.tmp.<host>.<pid>


class CtrlC:
    """Ctrl-C answered as Python's own handler answers it (a KeyboardInterrupt wherever the main thread is), and
    remembered. A KeyboardInterrupt that lands inside library code can be lost: a sweep once trained on to the
    end and exited 0 after a Ctrl-C sent as its first job started (CI, 2026-12-01, tests/test_user_errors.py).
    `check` raises it again where stopping is safe; `remembered` checks once more when the command ends."""

    seen = False

    @classmethod
    def handle(cls, signum: int, frame: FrameType | None) -> None:
        cls.seen = True
        raise KeyboardInterrupt

    @classmethod
    def check(cls) -> None:
        """At a point where stopping is safe (a job's start): raise the Ctrl-C that something swallowed."""
        if cls.seen:
            raise KeyboardInterrupt

    @classmethod
    @contextlib.contextmanager
    def remembered(cls) -> Iterator[None]:
        """Python's handler replaced by `handle` for the block (not where SIGINT is ignored: a background job),
        then put back; a Ctrl-C seen in the block and swallowed is raised at its end."""
        previous = signal.getsignal(signal.SIGINT)
        if previous is not cls.handle:  # the outermost block: a Ctrl-C of an earlier command is not this one's
            cls.seen = False
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, cls.handle)
        try:
            yield
            cls.check()
        finally:
            if previous is signal.default_int_handler:
                signal.signal(signal.SIGINT, previous)


def cli_exit_code(run: Callable[[], None], interrupted: Callable[[], str] | None = None) -> int:
    """Run a command: 0; or 2 after one `error:` line for bad input or a file that cannot be read or written; or
    130 after one line on Ctrl-C (`interrupted` says what finished and how to resume)."""
    try:
        with CtrlC.remembered():
            run()
    except MeminfError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return USER_ERROR
    except OSError as err:
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        message = interrupted() if interrupted is not None else "nothing was written (outputs are written last)"
        print(f"interrupted: {message}", file=sys.stderr)
        return INTERRUPTED
    return 0


def cli_main(parse: Callable[[list[str] | None], Any], run: Callable[[Any], None], argv: list[str] | None) -> int:
    """A command's main: parse the arguments (argparse exits 2 itself on bad options), run, exit code."""
    args = parse(argv)
    return cli_exit_code(lambda: run(args))


def parse_seeds(spec: str, option: str = "seeds") -> list[int]:
    """`a..b` (inclusive), single seeds, comma-separated: '0..3,7' -> [0, 1, 2, 3, 7], in the order given;
    a seed named twice or a reversed range is an error. `option` names the setting in messages (`seed=`,
    `--holdout-seeds`)."""
    shown = f"{option}{spec}" if option.endswith("=") else f"{option} {spec}"
    seeds: list[int] = []
    for item in spec.split(","):
        first, dots, last = item.strip().partition("..")
        try:
            low, high = int(first), int(last if dots else first)
        except ValueError as err:
            raise ConfigError(f"{shown} is not a seed list; use e.g. 0..63 or 1,5,9..12") from err
        if high < low:
            raise ConfigError(f"{shown}: the range {item.strip()} is empty; ranges are inclusive and go up, "
                              f"e.g. {high}..{low}")
        seeds += range(low, high + 1)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{shown} names a seed twice; give each seed once")
    return seeds


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, where it has one that says something (not None, False or [])
    and the help does not name it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if not action.option_strings or default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def command_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The argument parser of an entry point: its description is the first paragraph of the module's docstring
    (whole sentences), each option's help shows its default."""
    description = " ".join(doc.split("\n\n", 1)[0].split())
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=DefaultsHelpFormatter)
