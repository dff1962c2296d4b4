"""``navigator`` command lines, up to each subcommand's parser (nothing is ever started):
properties and a bounded run of ``fuzz/fuzz_cli.py``."""

from __future__ import annotations

from pathlib import Path

import fuzz_cli
import fuzz_props
import harness
import pytest
from hypothesis import given
from hypothesis import strategies as st

COMMANDS = fuzz_cli.COMMANDS


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(COMMANDS))
    options = fuzz_cli.options_of(command)
    words = st.one_of(
        st.sampled_from(options),
        st.sampled_from(options).flatmap(lambda o: fuzz_props.TEXT.map(lambda v: f"{o}={v}")),
        fuzz_props.TEXT,
        st.sampled_from(["-", "--", "-h", "--help", "--=", "-=x", "--no-", "1", "-1", "nan"]),
    )
    return [command, *draw(st.lists(words, max_size=6))]


@fuzz_props.bounded(300)
@given(command_lines())
def test_a_command_line_parses_or_exits_0_or_2(argv: list[str]) -> None:
    outcome = fuzz_cli.run_cli([a.replace("\x00", "") for a in argv])
    assert outcome.kind in ("parsed", "exit"), outcome
    if outcome.kind == "exit" and outcome.code == 2:
        assert "error:" in outcome.output, outcome.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    outcome = fuzz_cli.run_cli([command, "--help"])
    assert (outcome.kind, outcome.code) == ("exit", 0)
    assert "usage:" in outcome.output


@pytest.mark.parametrize(
    ("argv", "kind", "code"),
    [
        pytest.param([], "returned", 0, id="no-command"),
        pytest.param(["nope"], "returned", 2, id="unknown-command"),
        pytest.param(["--version"], "returned", 0, id="version"),
        pytest.param(["bootstrap", "--app", "web", "--cluster", "east"], "parsed", None, id="ok"),
        pytest.param(["bootstrap", "--xds", "h:²"], "exit", 2, id="bad-host-port"),
        pytest.param(["xds", "--coalesce", "x"], "exit", 2, id="bad-float"),
    ],
)
def test_outcomes(argv: list[str], kind: str, code: int | None) -> None:
    outcome = fuzz_cli.run_cli(argv)
    assert (outcome.kind, outcome.code) == (kind, code), outcome.output


@fuzz_props.bounded(200)
@given(st.integers(0, 255), st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=30))))
def test_arbitrary_bytes_as_argv(flags: int, frames: list[harness.Frame]) -> None:
    fuzz_cli.test_one_input(harness.join_frames(flags, frames))


def test_fuzzer_runs_clean(tmp_path: Path) -> None:
    fuzz_props.assert_clean(fuzz_props.fuzz("cli", tmp_path), "cli")
