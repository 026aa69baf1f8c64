"""Errors the user can fix: a setting, an argument or an input file.

`d3po <step>` prints these on one line, without a traceback, and exits with status 1, as it does
an OSError about a path (absent, a folder, not permitted); any other exception (a bug, or an
error inside torch or pandas) keeps its traceback. Each class also derives from the built-in
error it refines (ValueError, FileNotFoundError, RuntimeError), so code that catches those keeps
working.
"""

from __future__ import annotations


class UserError(Exception):
    """Base class: the message says what is wrong and where (field, file, line), in one line."""


class ConfigError(UserError, ValueError):
    """A setting or argument with a value that is not allowed: names the field."""


class InputFileError(UserError, ValueError):
    """An input file that cannot be used as it is (empty, truncated, wrong columns): names it."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or a step needs) is not there: names the path."""
