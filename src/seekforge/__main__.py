"""``python -m seekforge`` (and ``torchrun -m seekforge``) runs the CLI."""

import sys

from seekforge.cli import main

sys.exit(main())
