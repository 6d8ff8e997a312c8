"""The exception tree and the exit codes the CLI maps it to.

Every error a user can cause is a :class:`SplitlabError`; its message names
the field, file or value that was wrong and the numbers that explain it.
The CLI prints the message on one line and exits with the class's code.

Exit codes
----------
0   success
1   unexpected internal error (a bug: the CLI shows a traceback with --debug)
2   bad command-line usage (click's own code)
3   invalid scenario, model, data or algorithm input
4   the testbed could not be set up or torn down
5   a run finished incomplete (a node failed or was stopped)
6   the wire protocol refused a peer (authentication, version, size)
"""

from __future__ import annotations


class SplitlabError(Exception):
    """Base class of every error splitlab raises on purpose."""

    exit_code = 1


class ConfigError(SplitlabError):
    """A scenario, model, data set or algorithm given by the user is invalid."""

    exit_code = 3


class TestbedError(SplitlabError):
    """A node, link or limit could not be realised on this machine."""

    __test__ = False  # not a pytest test class despite the name
    exit_code = 4


class RunIncompleteError(SplitlabError):
    """A run ended before every task finished; the reason says why."""

    exit_code = 5


class ProtocolError(SplitlabError):
    """A frame was malformed, oversized, unauthenticated or of another version."""

    exit_code = 6
