"""What the commands share: the log level of the inspection commands, the ``-c/--config``
option, the configuration and the model registry it names."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

# The log level of the read-only inspection commands (models, config check, route explain, jobs,
# results): their output is the answer, not the node's INFO lines.
QUIET = logging.WARNING


def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("-c", "--config", metavar="YAML", help="node configuration (default: built-in defaults)")
    return p


def config_of(args: argparse.Namespace):
    """The configuration ``-c`` names (defaults when none), validated."""
    from neuroread.node.config import load_config

    return load_config(Path(args.config) if args.config else None)


def registry_of(config):
    """The product models plus the configuration's plugins."""
    from neuroread.models import default_registry

    return default_registry(config.plugins)


def count(minimum: int):
    """An argparse type: an integer >= ``minimum`` (argparse then names the option in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse
