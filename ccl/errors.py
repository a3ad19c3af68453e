"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class CclError(Exception):
    """A problem the user can fix (bad input, missing data); shown without a traceback."""
