"""User-facing errors: one line that names the file, key or value at fault and what to do.

The CLI prints these without a traceback (``--debug`` shows it); anything else is a bug in picstory.
"""


class UserError(Exception):
    """A mistake in the user's input (path, option, data). ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class UnusableDataError(DataError):
    """The data set cannot be trained on (no images, one class, too many bad files)."""

    exit_code = 2
