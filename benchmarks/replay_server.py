"""Moved to ``navigator.bench.replay`` (run ``python -m navigator.bench.replay``): the floor
server, SotW and Delta ADS replaying pre-encoded snapshots. This path is kept so that older
command lines still work; see that module for what it does."""

from __future__ import annotations

import sys

from navigator.bench.replay import main

if __name__ == "__main__":
    sys.exit(main())
