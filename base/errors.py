"""The project's own exceptions: the command line turns them into one ``sparsearch: error:`` line
and a non-zero exit; anything else is a bug and keeps its traceback."""


class SparsearchError(Exception):
    """Bad input or state that the user can fix: missing model, unsupported architecture,
    infeasible budget, corrupt or mismatched supernet. The message is one readable line."""


class ConfigError(SparsearchError, ValueError):
    """A configuration value that fails validation; the message names the setting and the value."""


class SparsearchWarning(UserWarning):
    """Something the user should know that does not stop the run (the command line prints it as
    one ``sparsearch: warning:`` line)."""


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (its type name if it has none), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
