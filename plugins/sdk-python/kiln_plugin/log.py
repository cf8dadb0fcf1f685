"""Leveled log messages, written by the host to its log tagged with the job id and type.

A component's stdout and stderr go nowhere (`print` is lost), so this is the way to leave a
trace. When a job fails on an uncaught exception, the SDK logs its traceback with `error`.

    log.info(f"splitting {len(text)} characters")
    log.warn("the model's JSON did not parse; keeping the text")
"""

from __future__ import annotations

from . import _host
from ._bindings import log as _wit

Level = _wit.Level


def trace(message: str) -> None:
    """Writes a `trace` message."""
    _host.current().write(Level.TRACE, str(message))


def debug(message: str) -> None:
    """Writes a `debug` message."""
    _host.current().write(Level.DEBUG, str(message))


def info(message: str) -> None:
    """Writes an `info` message."""
    _host.current().write(Level.INFO, str(message))


def warn(message: str) -> None:
    """Writes a `warn` message."""
    _host.current().write(Level.WARN, str(message))


#: `warn` under the name Python's `logging` uses.
warning = warn


def error(message: str) -> None:
    """Writes an `error` message. If the plugin then traps, the job's error message starts
    with the last one."""
    _host.current().write(Level.ERROR, str(message))
