"""The one exception type for bad user input, and the one rule for which errors are the user's to fix.

The CLI prints :func:`user_message` of such an error as one line and exits with code 2; the distributed
protocol uses the same rule to pass a rank's error on to the others.
"""

from __future__ import annotations

from typing import Optional


class UsageError(ValueError):
    """Bad input from the user (a file, an option, a shape). The message says what is wrong and what to do."""


class MissingDependency(UsageError, ImportError):
    """An optional dependency is not installed: a usage error for the CLI (one line, exit 2) that library code
    can still catch as ImportError."""


def require_optional(module: str, extra: str):
    """Import an optional dependency or raise :class:`MissingDependency` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"this needs the optional {module} dependencies: "
                                f"pip install 'diffusion-es[{extra}]'") from None


def _first_line(text: str) -> str:
    text = str(text).strip()
    return text.splitlines()[0] if text else ""


def _out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    name = type(e).__name__
    return isinstance(e, RuntimeError) and (name == "OutOfMemoryError" or "can't allocate memory" in str(e)
                                            or "out of memory" in str(e).lower())


def user_message(e: BaseException) -> Optional[str]:
    """The one-line message of an error the user can fix (bad input, a file system problem, a size too large
    for this machine), or ``None`` for anything else (a bug: its traceback is shown).

    * :class:`UsageError` and other ``ValueError`` (library functions name the parameter that is wrong);
    * ``OSError`` (a file that exists where a folder is needed, a full disk, no permission), as
      ``PATH: what the system said``;
    * running out of memory (Python's ``MemoryError``, torch's allocator errors), with what to do."""
    if _out_of_memory(e):
        detail = _first_line(e)[:120]
        return ("out of memory" + (f" ({detail})" if detail else "")
                + "; ask for less (fewer samples or seeds, a smaller --batch-size or model)")
    if isinstance(e, OSError) and not isinstance(e, ImportError):
        if e.filename is not None and e.strerror:
            other = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
            return f"{e.filename}{other}: {e.strerror.lower()}"
        return _first_line(e) or type(e).__name__
    if isinstance(e, ValueError):  # UsageError, MissingDependency and the library's checks
        return _first_line(e) or type(e).__name__
    return None
