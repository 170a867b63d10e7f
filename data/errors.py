"""The one family of errors a user can fix: library code raises them, only the commands turn them into exit codes.

A UserError's str() is one line that names the file or flag at fault and says
what to do; a command prints it on stderr and exits with the error's
`exit_status` (1; with --debug, the traceback instead). Every module's own user
errors subclass it (a bad image, a bad annotation file, a checkpoint that does
not fit, a run folder in the way), so a command catches one class. Anything else
is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An input a user must change (a file, a flag, a folder); str() is one line naming it."""

    exit_status = 1  # what the command exits with (data.cli.user_errors)


class UsageError(UserError, ValueError):
    """A flag's value a user must change; str() is one line naming the flag."""


class OutputExistsError(UserError, FileExistsError):
    """An output that is there already and is not written over (a dataset, earlier results); str() names it."""
class Stopped(UserError):
    """Work stopped on request (SIGINT / SIGTERM) after saving what it had; str() says how to continue.

    The command exits with 128 + the signal's number (130, 143), as a shell reports a process the
    signal ended, so scripts and schedulers see that it was stopped, not that it failed or finished.
    """

    def __init__(self, message, signal_number):
        super().__init__(message)
        self.exit_status = 128 + int(signal_number)
