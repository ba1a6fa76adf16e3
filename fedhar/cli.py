"""The `fedhar` command line: one entry point, one sub-command per job.

Errors fedhar expects (bad data, missing datasets, bad options) print as one line
prefixed "fedhar: error:" and exit with status 2; so do errors of the file system (a
file that cannot be read or written, a full disk), naming the file. Anything else is a
bug and keeps its traceback. Ctrl-C and SIGTERM exit 130, after the same clean-up.
"""

from __future__ import annotations

import argparse
import sys

from fedhar import __version__
from fedhar.console import set_verbose
from fedhar.errors import FedharError
from fedhar.options import Parser

DESCRIPTION = """\
fedhar simulates federated fine-tuning of a frozen, self-supervised Transformer with
low-rank adapters (LoRA / QLoRA) for Human Activity Recognition on inertial data.

Start with:
  fedhar data list             which datasets fedhar knows and where it found them
  fedhar data info synthetic   the embedded synthetic data (no download needed)
  fedhar data info hapt        windows per class and subject of a real dataset
  fedhar pretrain              pretrain the MAE backbone (cached, resumable)
  fedhar lodo --data ...       the centralised Leave-One-Dataset-Out baseline
  fedhar fl                    a short federated LoRA run on the synthetic data
"""


#: entry-point group of sub-commands added from outside the library core: each entry is a
#: ``register(commands)`` function. fedhar's Flower app adds fl, sweep, deploy and plot this
#: way (pyproject.toml), so the core never imports it; another package can add its own.
COMMANDS_GROUP = "fedhar.commands"
APP_COMMANDS = ("fl", "sweep", "deploy", "plot")  # their order in --help; others follow by name


def plugin_commands() -> list:
    """The entry points of ``COMMANDS_GROUP``, fedhar's app first."""
    from importlib.metadata import entry_points

    found = entry_points(group=COMMANDS_GROUP)
    return sorted(found, key=lambda ep: (APP_COMMANDS.index(ep.name) if ep.name in APP_COMMANDS
                                         else len(APP_COMMANDS), ep.name))


def build_parser() -> argparse.ArgumentParser:
    from fedhar import experiments_cli
    from fedhar.data import cli as data_cli

    parser = Parser(prog="fedhar", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"fedhar {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' logs and warnings (Flower, Ray, torch, bitsandbytes)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    data_cli.register(commands)
    experiments_cli.register(commands)
    for ep in plugin_commands():
        try:
            register = ep.load()
        except Exception as e:  # a broken plugin names itself instead of a traceback
            raise FedharError(f"command {ep.name!r} ({COMMANDS_GROUP} entry point {ep.value!r}) "
                              f"cannot be loaded: {type(e).__name__}: {e}") from None
        register(commands)
    _add_verbose_everywhere(parser)
    return parser


def _add_verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """`fedhar fl --verbose` as well as `fedhar --verbose fl`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                if not any("--verbose" in a.option_strings for a in sub._actions):
                    sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                     help="also show the libraries' logs and warnings")
                _add_verbose_everywhere(sub)


def main(argv: list[str] | None = None) -> int:
    from fedhar.interrupt import interrupt_on_sigterm, leave

    command_line = argv is None  # the process's own command (not a call from Python): it may end the process
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser()  # (its help texts name cache folders: FEDHAR_CACHE_DIR is checked)
        try:
            args, extra = parser.parse_known_args(argv)
            if extra:
                _reject_unknown(parser, argv, extra)
        except SystemExit as exc:  # --help, --version, or a usage error already printed as one line
            return int(exc.code or 0)
        set_verbose(args.verbose)
        if not getattr(args, "run", None):
            parser.print_help()
            return 0 if args.command is None else 2
        with interrupt_on_sigterm():
            return int(args.run(args) or 0)
    except FedharError as exc:
        print(f"fedhar: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system's refusal (permissions, full disk, ...): name the file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"fedhar: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedhar: interrupted", file=sys.stderr)
        if command_line:
            leave(130)
        return 130


def _reject_unknown(parser: argparse.ArgumentParser, argv: list[str], extra: list[str]) -> None:
    """Unknown options, reported by the sub-command they were given to, with a did-you-mean
    among that sub-command's options."""
    leaf = parser
    for token in argv:
        subs = [a for a in leaf._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and token in subs[0].choices:
            leaf = subs[0].choices[token]
    suggestion = leaf.unknown_option(extra) if isinstance(leaf, Parser) else ""  # sub-parsers are Parsers too
    leaf.error(suggestion or f"unrecognized arguments: {' '.join(extra)}")


if __name__ == "__main__":
    sys.exit(main())
