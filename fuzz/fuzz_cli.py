"""Fuzz target: ``navigator`` command lines, up to each subcommand's argument parser.

``navigator.cli.main(argv)`` runs with ``argparse.ArgumentParser.parse_args`` wrapped so
that a command line that parses stops there (``Parsed``): nothing is ever started. What
may come out: ``Parsed``, ``SystemExit`` 0 (``--help``) or 2 (a parse error), or ``main``
returning 0 (usage) or 2 (an unknown command). Anything else is a finding.

Input (``harness`` frames): the flags byte picks the command (``flags % (N + 1)``, the last
value: the first argument comes from the frames too); each frame is one argument, chosen by
its control byte: 0 the payload as text (UTF-8, undecodable bytes as the surrogates a POSIX
argv holds), 1 one of the command's option strings (payload byte 0 picks it), 2 that option
``=`` the rest of the payload, 3 ``--help``.

Run: ``python fuzz/fuzz_cli.py [libFuzzer flags] DIR`` with DIR a copy of
``fuzz/corpus/cli`` (libFuzzer adds what it finds to DIR; see fuzz/README.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import harness

# NOTE: argparse too: its branches are what a command line explores.
with harness.instrumented(__name__, also=["argparse"]):
    import argparse

    from navigator import cli

    for _module, _ in cli.COMMANDS.values():
        importlib.import_module(_module.partition(":")[0])

COMMANDS = tuple(cli.COMMANDS)


class Parsed(Exception):
    """The command line parsed: the command would start now."""

    def __init__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> None:
        super().__init__(parser.prog)
        self.parser = parser
        self.namespace = namespace


_ORIGINAL = argparse.ArgumentParser.parse_args


@contextlib.contextmanager
def parse_only() -> Iterator[None]:
    """Every ``parse_args`` that succeeds raises ``Parsed`` instead of returning."""

    def parse_args(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        namespace = _ORIGINAL(self, *args, **kwargs)
        raise Parsed(self, namespace)

    argparse.ArgumentParser.parse_args = parse_args  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = _ORIGINAL  # type: ignore[method-assign]


@dataclasses.dataclass(frozen=True)
class Outcome:
    kind: str
    """``parsed``, ``exit`` or ``returned``."""
    code: int | None
    output: str


def run_cli(argv: Sequence[str]) -> Outcome:
    out = io.StringIO()
    with parse_only(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = cli.main(list(argv))
        except Parsed:
            return Outcome("parsed", None, out.getvalue())
        except SystemExit as exc:
            assert exc.code in (0, 2), f"{argv!r}: exit code {exc.code!r}"
            return Outcome("exit", exc.code, out.getvalue())
    assert code in (0, 2), f"{argv!r}: returned {code!r}"
    return Outcome("returned", code, out.getvalue())


_OPTIONS: dict[str, tuple[str, ...]] = {}


def options_of(command: str) -> tuple[str, ...]:
    """The option strings of a command's parser (``--help`` builds it without running)."""
    found = _OPTIONS.get(command)
    if found is None:
        seen: list[argparse.ArgumentParser] = []
        original_help = argparse.ArgumentParser.print_help

        def print_help(self: argparse.ArgumentParser, file: Any = None) -> None:
            seen.append(self)

        argparse.ArgumentParser.print_help = print_help  # type: ignore[method-assign]
        try:
            run_cli([command, "--help"])
        finally:
            argparse.ArgumentParser.print_help = original_help  # type: ignore[method-assign]
        found = tuple(sorted({s for p in seen for s in p._option_string_actions}))
        _OPTIONS[command] = found
    return found


def argv_of(flags: int, frames: Sequence[harness.Frame]) -> list[str]:
    pick = flags % (len(COMMANDS) + 1)
    command = COMMANDS[pick] if pick < len(COMMANDS) else None
    options = options_of(command) if command is not None else ()
    argv = [command] if command is not None else []
    for control, payload in frames:
        text = payload.decode("utf-8", "surrogateescape")
        kind = control & 3
        if kind in (1, 2) and options and payload:
            option = options[payload[0] % len(options)]
            rest = payload[1:].decode("utf-8", "surrogateescape")
            argv.append(option if kind == 1 else f"{option}={rest}")
        elif kind == 3:
            argv.append("--help")
        else:
            argv.append(text)
    # NOTE: a NUL cannot be in a real argv (exec takes C strings).
    return [a.replace("\x00", "") for a in argv]


def test_one_input(data: bytes) -> None:
    flags, frames = harness.split_frames(data)
    run_cli(argv_of(flags, frames))


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)
    harness.run(test_one_input, mutator=harness.frames_mutator())
