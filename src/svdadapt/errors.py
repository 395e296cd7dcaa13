"""The one exception type that the command line turns into a one-line message."""

import difflib
import re


class SvdadaptError(Exception):
    """A problem with the user's input or environment, explained in one line that says what to fix.

    The CLI prints it as ``svdadapt: error: <message>`` and exits with status 2; library callers can
    catch it like any exception. Bugs raise ordinary exceptions instead.
    """


def require(condition: bool, message: str) -> None:
    """Raise :class:`SvdadaptError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SvdadaptError(message)


def closest(value: object, choices) -> str | None:
    """The choice ``value`` was most likely meant to be, if any is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return close[0] if close else None


def unknown(kind: str, value: object, choices, also: str = "", where: str = "") -> SvdadaptError:
    """The one phrasing of "not one of the choices": ``unknown KIND 'VALUE' [in WHERE]; did you mean
    'X'? choose one of A, B, C`` (``also``: other forms it may take)."""
    names = [str(c) for c in choices]
    close = closest(value, names)
    guess = f" did you mean {close!r}?" if close else ""
    place = f" in {where}" if where else ""
    listed = ", ".join(names) + (f", {also}" if also else "")
    return SvdadaptError(f"unknown {kind} {value!r}{place};{guess} choose one of {listed}")


GUESSED = re.compile(r"(did you mean '[^']*'\?) choose one of .*$")


class Problems(SvdadaptError):
    """Every problem of one input (a recipe, a config file) at once: its one line when there is one,
    else a line for each (an unknown name's guess then stands without the list of choices)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
            return
        lines = [GUESSED.sub(r"\1", p) for p in self.problems]
        super().__init__("\n  ".join([f"{len(lines)} problems:", *lines]))
