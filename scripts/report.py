"""Thin entry point: same as the `diffplan-report` console command (argparse options as arguments)."""

import sys

from diffplan.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
