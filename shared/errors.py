"""The one exception type for a user's mistake found past option parsing: the CLI prints it as one
sentence and exits 2, with no traceback (services and feeds raise it; they never import the CLI)."""


class UserMistake(Exception):
    """Its message says what was wrong and how to fix it."""
