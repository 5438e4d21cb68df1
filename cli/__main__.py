"""`python -m sentistream.cli ...` (what tests and benchmarks start)."""

import sys

from . import main

sys.exit(main())
