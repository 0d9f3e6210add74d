"""The errors that end a command: the one-line config error (raised by validation before any work,
printed as one line, exit 2) and :class:`Interrupted` (a signal stopped training). Kept free of
heavy imports, so that what runs before torch loads (the command line, the run-folder lock) can use them."""
from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Any, Iterator


class ConfigError(ValueError):
    """A bad config value; ``str(err)`` is the one-line message for the user."""


@contextmanager
def exit_on_config_error() -> Iterator[None]:
    """A :class:`ConfigError` inside ends the command: its one line on stderr, exit status 2."""
    try:
        yield
    except ConfigError as err:
        print(f"tsdyn: config error: {err}", file=sys.stderr)
        sys.exit(2)


def fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


class Interrupted(BaseException):
    """A signal (SIGINT, SIGTERM, a pre-emption) ended training between two optimizer steps. Like
    ``KeyboardInterrupt`` it is no ``Exception``: a sweep's per-job error handling lets it through."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"
