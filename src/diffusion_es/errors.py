"""The one exception type for bad user input: the CLI prints its message as one line and exits with code 2."""


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
