"""The one exception type that reaches the user as a one-line message, not a traceback."""


class UserError(Exception):
    """Bad input or configuration: the command prints `error: <message>` and exits with status 2."""
