"""The one exception type for mistakes a user can fix: the CLI prints it as one `error:` line, exit 2."""


class UserError(Exception):
    """Bad input: the message says what was wrong and how to fix it."""
