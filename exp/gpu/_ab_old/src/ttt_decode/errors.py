"""User-facing errors: one line that names the problem and the fix.

Everything a user can get wrong (a model name, a batch size, a dtype, a shape a kernel cannot take,
a missing optional package) raises `UserError` at the boundary; the CLI prints its message alone,
without a traceback.
"""


class UserError(ValueError):
    """Bad input from the user; the message is a single line that says how to fix it."""


class MissingPackageError(UserError):
    """An optional package is needed for the requested feature."""

    def __init__(self, package: str, feature: str, install: str | None = None):
        hint = install or f"pip install {package}"
        super().__init__(f"{feature} needs the optional package '{package}', which is not installed: {hint}")
        self.package = package


def require(condition: bool, message: str) -> None:
    """Raise UserError(message) unless condition holds."""
    if not condition:
        raise UserError(message)


class OutOfMemoryEstimate(UserError):
    """A run whose estimated memory is over the device's: refused before anything is allocated.

    The benchmark cell records it as status `oom` (its message starts with "estimate:"); other commands
    print it as one line."""


class NonFiniteLogits(UserError):
    """The model produced NaN/inf logits (NaN weights, a state that blew up): the ids decoded from them
    would be meaningless, so the run is refused rather than timed. A benchmark cell records it as `error`."""


class RecordWriteError(OSError):
    """A result, log or cache file could not be written (disk full, permissions, the path is not a file).

    Never a silent success: the CLI prints the one-line message (which names the file) and exits 4."""
