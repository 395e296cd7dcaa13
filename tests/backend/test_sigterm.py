"""SIGTERM inside a guard becomes svdadapt's one-line error, even when it lands in a finalizer."""

from __future__ import annotations

import os
import signal
import time

import pytest

from svdadapt.backend import stop_on_sigterm
from svdadapt.errors import SvdadaptError


class _Finalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside __del__
        for _ in range(1000):  # bytecodes after the signal: it is handled before __del__ returns
            pass


def test_sigterm_is_the_guards_error():
    with pytest.raises(SvdadaptError, match="stopped"), stop_on_sigterm("stopped: launch again"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)


def test_sigterm_inside_a_finalizer_is_not_lost(capsys):
    with pytest.raises(SvdadaptError, match="stopped"), stop_on_sigterm("stopped: launch again"):
        _Finalized()  # dropped at once: its __del__ receives the signal
        time.sleep(1)  # the signal is delivered again once out of __del__
    assert "Exception ignored" not in capsys.readouterr().err
