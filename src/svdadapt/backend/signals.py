"""SIGTERM as a one-line error: a launcher, a scheduler's stop or ``kill`` ends a command the way
Ctrl-C does, with what it was writing atomically dropped and its temporary files removed."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import SvdadaptError


@dataclass
class _Guard:
    """The SIGTERM guards in force (innermost last) and whether this process is already stopping."""

    messages: list[str] = field(default_factory=list)
    stopping: str = ""  # "error": an error is on its way out; "sigterm": a SIGTERM became the error
    previous: object = None  # the handler before the outermost guard


_guard = _Guard()


def _on_sigterm(signum, frame) -> None:
    if _guard.stopping == "error":
        return  # already stopping on an error (a peer lost, say): its message stands, cleanup goes on
    if _guard.stopping == "sigterm":
        signal.signal(signal.SIGTERM, _guard.previous)  # a second SIGTERM ends the process as usual
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if _inside_finalizer(frame):  # raised there, the error would be printed as "ignored" and lost
        threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGTERM)).start()  # again, once out of it
        return
    _guard.stopping = "sigterm"
    raise SvdadaptError(_guard.messages[-1])


def _inside_finalizer(frame) -> bool:
    """Whether the signal arrived inside a ``__del__`` (the garbage collector's, say), where Python
    swallows exceptions."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


@contextmanager
def stop_on_sigterm(message: str) -> Iterator[None]:
    """Inside, SIGTERM (a launcher, a scheduler's stop, ``kill``) raises a one-line error with
    ``message`` (the innermost guard's) where this process is, so that what it was writing atomically
    is dropped and its temporary files are removed, as after Ctrl-C, not left half-done. While an
    error is already on its way out, a SIGTERM (the launcher stopping the others) is ignored, so the
    first reason is the one said."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = not _guard.messages
    if outermost:
        _guard.previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _guard.messages.append(message)
    try:
        yield
    except BaseException:
        _guard.stopping = _guard.stopping or "error"
        raise
    finally:
        _guard.messages.pop()
        if outermost:
            signal.signal(signal.SIGTERM, _guard.previous)
            _guard.stopping, _guard.previous = "", None
