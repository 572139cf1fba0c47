"""`python -m meshrpc` is the `meshrpc` command."""

import sys

from .cli import main

sys.exit(main())
