"""``python -m bench``: the benchmark (see ``bench/cli.py``)."""

import sys

from bench.cli import main

sys.exit(main())
