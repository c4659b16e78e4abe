"""`python -m fxapprox ...` → the command line."""

import sys

from fxapprox.cli import main

sys.exit(main())
