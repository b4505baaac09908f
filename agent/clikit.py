"""Shared pieces of the command line: context settings and the error wrapper that turns
CllmError (user mistakes) into one line with a hint. Imports nothing from the commands, so
every command module can use it without import cycles."""
from __future__ import annotations

import functools
import sys

import click

from engine.errors import CllmError

CONTEXT_SETTINGS = dict(help_option_names=["-h", "--help"], max_content_width=100)


def friendly_errors(fn):
    """Turn CllmError (user mistakes) into a one-line message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CllmError as e:
            click.echo(f"Error: {e.one_line()}", err=True)
            sys.exit(2)

    return wrapper
