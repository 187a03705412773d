"""The one exception type for bad input.

Every message names the offending file (or option) and says what to do about it; the CLI prints it
as a single line on stderr and exits with code 2.
"""


class RSGeoPruneError(Exception):
    """Bad input that the user can fix: the message names the file and the fix."""
