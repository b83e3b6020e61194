"""The one exception type for mistakes a user can fix: the CLI prints it as a single line, never a traceback."""


class UserError(Exception):
    """Bad input from the user (a wrong path, a malformed file, an unknown name). The message says how to fix it."""
