"""`python -m hj212gw.simulator`: the same as `hj212gw simulate`."""

import sys

from hj212gw.simulator.cli import main

sys.exit(main(sys.argv[1:]))
