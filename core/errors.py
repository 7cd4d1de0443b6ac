"""The one error base class of the project: every error that ends a command carries the exit code the CLI returns.

Exit codes are decided here and nowhere else; ``jobs.cli`` turns any ``LdotError`` into its message and its code.
"""

from __future__ import annotations

EXIT_OK = 0              # done (with failure rows, or nothing to do)
EXIT_ERROR = 1           # the run broke: I/O error, counts that do not add up, a bug; nothing was published
EXIT_USAGE = 2           # bad flags, settings, checkpoint, config or input: the message names what is wrong
EXIT_RECALL_GUARD = 3    # built, but the recall self-check is below the floor: not published
EXIT_FAILURE_GUARD = 4   # failure rate (or vanished share of the corpus) above its guard: not published
EXIT_LOCKED = 75         # another run holds the lock (EX_TEMPFAIL): this one did nothing

EXIT_NAMES = {EXIT_OK: "ok", EXIT_ERROR: "error", EXIT_USAGE: "bad settings or input",
              EXIT_RECALL_GUARD: "recall guard", EXIT_FAILURE_GUARD: "failure guard", EXIT_LOCKED: "lock held"}


class LdotError(Exception):
    """A command cannot go on; ``exit_code`` says how the process ends."""

    exit_code: int = EXIT_ERROR


class UsageError(LdotError, ValueError):
    """Something the user gave is wrong (flag, setting, file, checkpoint); fixing the input fixes the run."""

    exit_code = EXIT_USAGE


class RecallGuardError(LdotError):
    """An index was built but its recall self-check is below the floor the user set."""

    exit_code = EXIT_RECALL_GUARD


class FailureGuardError(LdotError):
    """Too many inputs failed (or vanished) for the result to be trusted."""

    exit_code = EXIT_FAILURE_GUARD


class LockHeldError(LdotError):
    """Another run holds the lock."""

    exit_code = EXIT_LOCKED
