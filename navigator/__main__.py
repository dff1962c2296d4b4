"""``python -m navigator`` is the ``navigator`` command."""

import sys

from navigator import cli

sys.exit(cli.main())
