"""Tying a node process's life to the testbed process that started it.

A node (base station or device agent) started by a testbed must not outlive
it: if the CLI is killed, even with SIGKILL, its nodes stop too.  Each node
asks the kernel for a parent-death signal as its first step.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_VARIABLE = "SPLITLAB_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Get SIGTERM when the starting process dies; exit now if it already has.

    The starting process's pid is read from ``$SPLITLAB_PARENT_PID``; a node
    started by hand (no variable) is left alone.  Linux only: elsewhere this
    does nothing.
    """
    expected = os.environ.get(PARENT_VARIABLE)
    if expected is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # The parent may have died between fork and the call above.
    if str(os.getppid()) != expected:
        sys.exit(4)
