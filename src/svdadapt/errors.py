"""The one exception type that the command line turns into a one-line message."""


class SvdadaptError(Exception):
    """A problem with the user's input or environment, explained in one line that says what to fix.

    The CLI prints it as ``svdadapt: error: <message>`` and exits with status 2; library callers can
    catch it like any exception. Bugs raise ordinary exceptions instead.
    """


def require(condition: bool, message: str) -> None:
    """Raise :class:`SvdadaptError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SvdadaptError(message)
