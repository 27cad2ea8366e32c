"""The one exception that means "this configuration cannot run", kept apart from bugs.

Drivers (`utils.cli.run`) print a `ConfigError` as one `error:` line; every other exception
keeps its traceback, so a TypeError deep in a run is never mistaken for bad input.

    >>> @validates
    ... def validate(config):
    ...     if config.budget < 1:
    ...         raise ValueError("budget must be >= 1")   # reaches the caller as ConfigError
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class ConfigError(ValueError):
    """A config field or value that an experiment refuses before any work.

    A ValueError, so callers that catch ValueError (and tests that expect one) still do.
    """


def validates(fn: F) -> F:
    """Marks `fn` as a config check: a ValueError it raises, including one from a library
    check it calls (a sampler, accountant or data split refusing a value), becomes a
    ConfigError with the same message, the original chained as its cause."""

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(str(e)) from e

    return checked  # type: ignore[return-value]
