"""The ``diffusion-es`` command line. Thin: each ``cmd_*.py`` module in this package registers one subcommand
(``register(subparsers)``, which sets ``func`` on its parser), parses options and calls the library.

Bad input raises :class:`diffusion_es.errors.UsageError` (or ValueError / FileNotFoundError from the library):
it is printed as one line, ``diffusion-es: error: ...``, and the process exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..errors import UsageError


class OneLineParser(argparse.ArgumentParser):
    """argparse with bad options reported as one line (``diffusion-es: error: ...``) and exit code 2."""

    def error(self, message):
        sys.stderr.write(f"diffusion-es: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


# library parameter names whose CLI flag is not simply --name-with-dashes
PARAM_FLAGS = {"n_samples": ("--samples", "--n"), "n_val_sets": ("--seeds", "--val-sets"), "n_sets": ("--sets",),
               "max_extend": ("--extend",), "lam_range": ("--range",), "n": ("--n",)}


def flag_message(msg: str, flags: dict) -> str:
    """A library message that starts with a parameter name (``steps must be >= 1``), with that name replaced by
    the command's flag for it (``--steps must be >= 1``). ``flags``: dest -> option string of the command."""
    from ..samplers import OPTION_FLAGS

    head, sep, rest = msg.partition(" ")
    have = set(flags.values())
    cands = [OPTION_FLAGS.get(head), *PARAM_FLAGS.get(head, ()), flags.get(head)]
    flag = next((f for f in cands if f in have), None)
    return f"{flag}{sep}{rest}" if flag and sep else msg


def _command_flags(parser: argparse.ArgumentParser, command) -> dict:
    """dest -> long option string of the chosen subcommand's options."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return {a.dest: max(a.option_strings, key=len) for a in action.choices[command]._actions
                    if a.option_strings}
    return {}


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__

    parser = OneLineParser(
        prog="diffusion-es",
        description="Find and fix exposure bias in diffusion models (Epsilon Scaling, ICLR 2024).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{info.name}").register(sub)
    return parser


def _apply_threads(threads) -> None:
    """The ``--threads`` option of any command (see :func:`.common.add_threads_arg`)."""
    if threads is None or threads == 0:
        return
    import torch

    torch.set_num_threads(threads)


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version (0) or a bad option, already reported in one line (2)
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        _apply_threads(getattr(args, "threads", None))
        rc = args.func(args)
    except KeyboardInterrupt:
        print("diffusion-es: interrupted; finished work was kept (rerun with the same arguments to resume where supported)",
              file=sys.stderr)
        return 130
    except (UsageError, ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"diffusion-es: error: {flag_message(msg, _command_flags(parser, args.command))}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
