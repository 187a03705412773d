"""The exception family for bad input.

Every message names the offending file or value and says what to do about it; the CLI prints it
as a single line on stderr and exits with code 2. Library messages speak of values and files;
:class:`InvalidOption` also records which option was wrong, so a front end can name its own flag
(the CLI writes ``--chunk -5: …`` where the library says ``chunk -5: …``).
"""


class RSGeoPruneError(Exception):
    """Bad input that the user can fix: the message names the file or value and the fix."""


class InvalidOption(RSGeoPruneError, ValueError):
    """An option value out of its range: ``option`` (python name), ``value`` and what it must be."""

    def __init__(self, option: str, value, must: str):
        self.option, self.value, self.must = option, value, must
        super().__init__(f"{option} {value!r}: {must}")

    def with_flag(self, flag: str) -> str:
        """The message with a front end's name for the option (``--chunk``)."""
        return f"{flag} {self.value!r}: {self.must}"
