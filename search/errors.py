"""The one exception type that the command line turns into a one-line error and a non-zero exit."""


class SparsearchError(Exception):
    """Bad input or state that the user can fix: missing model, unsupported architecture,
    infeasible budget, corrupt or mismatched supernet. The message is one readable line."""
