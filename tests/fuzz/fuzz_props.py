"""What the fuzz tests share: hypothesis settings, strategies of JSON-like values, and a
bounded fuzzing run of a target.

``fuzz`` runs a target as libFuzzer does, for a few seconds, over a copy of its committed
corpus (the checkout is never written), and reports how it ended.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"


def bounded(examples: int) -> settings:
    """Few examples, no deadline (the first example pays for imports and caches), no example
    database written into the checkout."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


EDGE_TEXT = st.sampled_from(
    [
        "",
        " ",
        "a",
        "0",
        "-1",
        "80",
        "65536",
        "http",
        "grpc",
        "TCP",
        "None",
        "*",
        "/",
        "a/b",
        "\ud800",
        "²",
        "٣",
        "9" * 5000,
        "1h",
        "999999999999999999h",
        "::1",
        "10.0.0.1",
    ]
)
"""Strings parsers trip over: surrogates, non-ASCII digits, longer than int() takes..."""

TEXT = st.one_of(EDGE_TEXT, st.text(max_size=20))

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)


def json_values(keys: Any = TEXT, max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value (what ``json.loads`` may return), small."""
    return st.recursive(
        SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``strategy``, sometimes any JSON value instead (a wrong type)."""
    return st.one_of(strategy, strategy, strategy, json_values(max_leaves=3))


FUZZ_SECONDS = 6
"""How long each target fuzzes in the test suite (fuzz/README.md says how to fuzz longer)."""


@dataclasses.dataclass(frozen=True)
class FuzzRun:
    returncode: int
    output: str
    runs: int
    """libFuzzer's count of inputs executed (``Done N runs``)."""
    artifacts: list[Path]
    """Crash, timeout and out-of-memory inputs it wrote."""


def fuzz(target: str, tmp_path: Path, seconds: int = FUZZ_SECONDS) -> FuzzRun:
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus" / target, corpus)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    args = [
        sys.executable,
        str(FUZZ / f"fuzz_{target}.py"),
        f"-max_total_time={seconds}",
        "-rss_limit_mb=2048",
        "-timeout=30",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
    ]
    # NOTE: bounded twice: libFuzzer stops itself; the deadline catches a hang at start.
    proc = subprocess.run(  # noqa: PLW1510 (the exit code is the result)
        args,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=seconds + 90,
    )
    output = proc.stdout + proc.stderr
    found = re.search(r"Done (\d+) runs", output)
    return FuzzRun(
        returncode=proc.returncode,
        output=output,
        runs=int(found.group(1)) if found else 0,
        artifacts=sorted(artifacts.iterdir()),
    )


def assert_clean(result: FuzzRun, target: str) -> None:
    """A bounded fuzzing run went past its corpus and found nothing."""
    tail = result.output[-4000:]
    assert result.returncode == 0, tail
    assert not result.artifacts, f"{[a.name for a in result.artifacts]}\n{tail}"
    files = len(list((FUZZ / "corpus" / target).iterdir()))
    assert result.runs > files, f"only {result.runs} runs for {files} corpus files\n{tail}"
