"""``python -m neuroread``: the ``neuroread`` command."""
from neuroread.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
