"""Errors a user can act on. Each carries a one-line message; the CLI prints it without a traceback."""

MESSAGE_CHARS = 2000  # the longest error line the command line prints


def one_line(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` as one printable line: line breaks and other control characters escaped (a
    recipe key or value can hold them), cut to ``limit`` characters."""
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return line if len(line) <= limit else line[: limit - 3] + "..."


class RvgenError(Exception):
    """Base class: something the user can fix, described in one line."""

    exit_code = 1


class UsageError(RvgenError):
    """Bad command-line input: a missing folder, an unknown device."""

    exit_code = 2


class RecipeError(UsageError):
    """A recipe that cannot run: unknown key, wrong type, missing file, unknown plugin or layer."""


class PluginError(UsageError):
    """A plugin that cannot be loaded or clashes with another."""


class ImageError(RvgenError):
    """One image that cannot be read or written; the batch goes on without it."""


class OptimizationError(RvgenError):
    """The optimisation of one image failed (for example a NaN loss); the batch goes on."""


class LockedError(RvgenError):
    """Another run holds the output folder; try again later (EX_TEMPFAIL)."""

    exit_code = 75


class OutOfMemory(RvgenError):
    """One image that does not fit in the device's memory even alone; the batch goes on."""
