"""The ``neuroread`` command line: the composition root, above the node and training.

Each subcommand is a small function taking parsed arguments, in the module of its kind:
:mod:`.training` (phantoms, train, train-demo), :mod:`.node` (serve, run, models, config,
route), :mod:`.jobs` (jobs, quarantine), :mod:`.tools` (orthanc-config, replay, results); each
module adds its own subcommands to the parser. :func:`main` takes ``argv`` so tests can call it
in-process. Heavy imports happen inside the commands, so ``neuroread --help`` stays fast.
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import jobs, node, tools, training


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuroread",
        description="neuroread: an AI node for neuro-imaging beside a PACS. "
        "Run 'neuroread COMMAND --help' for each command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for commands in (training, node, jobs, tools):  # the order of `neuroread --help`
        commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Inspection commands print their answer and nothing else: their log is at WARNING (on
    # stderr) unless -v; serve, run, replay and the training commands keep INFO.
    logging.basicConfig(level=logging.DEBUG if args.verbose else getattr(args, "log_level", logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"neuroread {args.command}: error: {exc}", file=sys.stderr)
        return 2


