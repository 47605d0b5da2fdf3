"""Exceptions that the CLI turns into one-line messages and exit codes (2 user error, 1 runtime)."""


class UserError(Exception):
    """Bad input from the user (config, paths, arguments): exit code 2, no traceback."""

    exit_code = 2


class ConfigError(UserError):
    """A config file or override is invalid; the message names file, key path and a suggestion."""


class DataError(UserError):
    """Input data (manifest, audio, checkpoint) cannot be used; the message names file/row and the fix."""
