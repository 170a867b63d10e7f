"""The one family of errors a user can fix: library code raises them, only the commands turn them into exit codes.

A UserError's str() is one line that names the file or flag at fault and says
what to do; a command prints it on stderr and exits with status 1 (with --debug,
the traceback instead). Every module's own user errors subclass it (a bad image,
a bad annotation file, a checkpoint that does not fit, a run folder in the way),
so a command catches one class. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An input a user must change (a file, a flag, a folder); str() is one line naming it."""


class UsageError(UserError, ValueError):
    """A flag's value a user must change; str() is one line naming the flag."""


class OutputExistsError(UserError, FileExistsError):
    """An output that is there already and is not written over (a dataset, earlier results); str() names it."""
