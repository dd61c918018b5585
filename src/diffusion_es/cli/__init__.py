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


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
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
    if threads < 0:
        raise UsageError(f"--threads must be >= 0 (0: torch's default), got {threads}")
    import torch

    torch.set_num_threads(threads)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
        print(f"diffusion-es: error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
