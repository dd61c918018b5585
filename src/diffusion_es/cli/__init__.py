"""The ``diffusion-es`` command line. Thin: each ``cmd_*.py`` module in this package registers one subcommand
(``register(subparsers)``, which sets ``func`` on its parser), parses options and calls the library.

Bad input raises :class:`diffusion_es.errors.UsageError` (or another error the user can fix, see
:func:`diffusion_es.errors.user_message`): it is printed as one line, ``diffusion-es: error: ...``, and the process
exits with code 2. A SIGTERM (``kill``) while a command runs is handled like Ctrl-C, so atomic writers remove their
temporary files on the way out.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..errors import user_message


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


def _empty_option(parser: argparse.ArgumentParser, args) -> str:
    """The first option (or positional argument) of the chosen subcommand given as an empty or blank string, or ''.
    No option of ours means anything by an empty value."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and args.command in action.choices:
            for a in action.choices[args.command]._actions:
                v = getattr(args, a.dest, None)
                if isinstance(v, str) and not v.strip() and v is not a.default:
                    return max(a.option_strings, key=len) if a.option_strings else a.metavar or a.dest
    return ""


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


class _TermAsInterrupt:
    """While a command runs in the main thread, SIGTERM raises KeyboardInterrupt (as Ctrl-C does), so ``finally``
    blocks (temporary files of atomic writes) run; the previous handler is put back afterwards."""

    def __enter__(self):
        import signal
        import threading

        self.old = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            def on_term(signum, frame):
                raise KeyboardInterrupt
            self.old = signal.signal(signal.SIGTERM, on_term)
        return self

    def __exit__(self, *exc):
        import signal

        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


class _DeferInterrupts:
    """While the parser is built (it imports torch, a second or more), SIGINT and SIGTERM are recorded
    (``self.got``) instead of acted on, and the handlers in place before are put back afterwards.

    torch imports numpy from its C code, where a KeyboardInterrupt raised inside numpy's import is swallowed: the
    Ctrl-C was lost (the whole job then ran), or numpy was left half-imported (an AttributeError traceback), or a
    C++ exception aborted the process. Recording the signal and acting on it once the imports are done makes every
    such Ctrl-C the one line 'interrupted before the command started'. Only the default handlers are replaced (a
    program that calls main() with handlers of its own keeps them), and only in the main thread."""

    def __enter__(self):
        import signal
        import threading

        self.got, self.old = None, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) in (signal.default_int_handler, signal.SIG_DFL, None):
                    self.old[sig] = signal.signal(sig, self._record)
        return self

    def _record(self, signum, frame):
        self.got = self.got or signum

    def __exit__(self, *exc):
        import signal

        for sig, old in self.old.items():
            signal.signal(sig, old)
        return False


RESUMABLE = ("sample", "repro", "compare")  # commands that keep finished parts (train: checkpoints); a command
# that keeps them only sometimes sets args.keeps_work when it does


def main(argv=None) -> int:
    interrupted = "diffusion-es: interrupted before the command started; nothing was written"
    try:  # the parser imports torch (a second or more): a Ctrl-C there is one line too
        with _DeferInterrupts() as pending:
            parser = build_parser()
            args = parser.parse_args(argv)
    except KeyboardInterrupt:  # (outside the main thread, where signals cannot be deferred)
        print(interrupted, file=sys.stderr)
        return 130
    except SystemExit as e:  # --help / --version (0) or a bad option, already reported in one line (2)
        if pending.got:
            print(interrupted, file=sys.stderr)
            return 130
        return e.code if isinstance(e.code, int) else 2
    if pending.got:
        print(interrupted, file=sys.stderr)
        return 130
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    empty = _empty_option(parser, args)
    if empty:  # Path("") is the current folder: an empty path read as "." or as "not given" (calibrate --out '')
        print(f"diffusion-es: error: {empty} is empty: give a value (a path, a name or a number)", file=sys.stderr)
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed: the provenance of reports
    try:
        with _TermAsInterrupt():
            _apply_threads(getattr(args, "threads", None))
            rc = args.func(args)
    except KeyboardInterrupt:
        command = getattr(args.func, "__module__", "").rsplit(".cmd_", 1)[-1]
        if command == "train":  # what it kept, from its folder
            from .cmd_train import interrupted_message

            msg = interrupted_message(args)
        elif command in RESUMABLE or getattr(args, "keeps_work", False):  # (calibrate --out)
            msg = "finished work was kept (rerun with the same arguments to continue where it stopped)"
        else:
            msg = "this command does not resume: rerun it to start again (any file it wrote is complete)"
        print(f"diffusion-es: interrupted; {msg}", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - errors the user can fix are one line; anything else is a bug
        msg = user_message(e)
        if msg is None:
            raise
        print(f"diffusion-es: error: {flag_message(msg, _command_flags(parser, args.command))}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
