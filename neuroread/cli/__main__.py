"""``python -m neuroread.cli``: the ``neuroread`` command."""
import sys

from neuroread.cli import main

sys.exit(main())
