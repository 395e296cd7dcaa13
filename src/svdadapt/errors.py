"""The one exception type that the command line turns into a one-line message."""

import difflib


class SvdadaptError(Exception):
    """A problem with the user's input or environment, explained in one line that says what to fix.

    The CLI prints it as ``svdadapt: error: <message>`` and exits with status 2; library callers can
    catch it like any exception. Bugs raise ordinary exceptions instead.
    """


def require(condition: bool, message: str) -> None:
    """Raise :class:`SvdadaptError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SvdadaptError(message)


def unknown(kind: str, value: object, choices, also: str = "", where: str = "") -> SvdadaptError:
    """The one phrasing of "not one of the choices": ``unknown KIND 'VALUE' [in WHERE]; did you mean
    'X'? choose one of A, B, C`` (``also``: other forms it may take)."""
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6)
    guess = f" did you mean {close[0]!r}?" if close else ""
    place = f" in {where}" if where else ""
    listed = ", ".join(names) + (f", {also}" if also else "")
    return SvdadaptError(f"unknown {kind} {value!r}{place};{guess} choose one of {listed}")
