"""One exception type for everything the user can get wrong.

The CLI and ``run.py`` turn a :class:`MedcompError` into a single line on stderr and exit code 2;
any other exception is a bug and keeps its traceback.
"""


class MedcompError(Exception):
    """A user-facing error: bad input file, corrupt bitstream, impossible target."""

    exit_code = 2


class CorruptFileError(MedcompError):
    """A file exists but its bytes are not what its format promises."""
