"""The base of every error a user can fix -- a path, a file, an option, a config key, a run directory.

The command line prints these as one line naming the thing and the fix, and exits with 2; any other
exception is a bug and keeps its traceback. It derives from ValueError because the data readers'
errors (ImageDataError, AudioDataError, ...) and the core's refusals of bad sampling options are
ValueErrors, and callers already catch them as such.
"""
from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix; printed as one line, no traceback."""
