"""`python -m hj212gw.cli ...`: the same as the `hj212gw` command."""

import sys

from hj212gw.cli import main

sys.exit(main())
