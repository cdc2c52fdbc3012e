"""The project's own errors: a problem with the user's input, settings or files, which the CLI prints as
one line (exit 2). Anything else (a CUDA out-of-memory, a shape bug) keeps its traceback."""
from __future__ import annotations


class UserError(Exception):
    """Base of every error whose message says what is wrong and how to fix it."""


class InputError(UserError, ValueError):
    """A value the user gave (config, data, model folder) that cannot work."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user named that is not there."""
