"""The one error type users see: a clear, one-line message that names the cause."""


class StitchError(Exception):
    """A user-facing failure (bad input, missing file, unsupported model); the CLI prints it on one line."""
