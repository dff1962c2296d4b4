"""The fuzz tests import the targets of fuzz/ (their harnesses, without instrumentation), and
keep hypothesis's own files (its caches; no example database is kept) out of the checkout."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import hypothesis.configuration

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
if str(FUZZ) not in sys.path:
    sys.path.insert(0, str(FUZZ))

hypothesis.configuration.set_hypothesis_home_dir(
    str(Path(tempfile.gettempdir()) / "navigator-fuzz-hypothesis")
)
