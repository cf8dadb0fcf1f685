"""Declaring a job type (`@job_type`) and running one attempt of it.

`run_attempt` is shared by the component export and the fake host, so a unit test goes
through exactly the parsing, serialisation and error mapping a deployed job does.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, List, Optional, TypeVar

from . import log
from ._bindings import types as _types
from ._events import to_json
from ._schema import parse_payload, payload_schema
from .errors import FileError, JobError, LlmError, Permanent

P = TypeVar("P")

_NAME = re.compile(r"[a-z0-9_-]+")
_U32_MAX = 2**32 - 1


@dataclass(frozen=True)
class Job(Generic[P]):
    """One attempt of one job, as your run function gets it."""

    #: The job id (a UUID), handy in log lines.
    id: str
    #: The job type name.
    job_type: str
    #: 1 for the first attempt, 2 for the first retry, and so on.
    attempt: int
    #: The client's payload, parsed into your payload dataclass.
    payload: P


@dataclass(frozen=True)
class Definition(Generic[P]):
    """A declared job type: what `@job_type` returns in place of your function."""

    name: str
    version: str
    description: str
    payload: type
    timeout_secs: int
    function: Callable[[Job[P]], Any]

    @property
    def schema(self) -> dict[str, Any]:
        """The payload's JSON Schema, derived from the payload dataclass."""
        return payload_schema(self.payload, f"{self.name} payload")

    def info(self) -> _types.PluginInfo:
        """What `describe` returns to the host."""
        return _types.PluginInfo(
            name=self.name,
            version=self.version,
            description=self.description,
            payload_schema=to_json(self.schema),
            default_timeout_secs=self.timeout_secs,
        )

    def __call__(self, job: Job[P]) -> Any:
        """Calls the run function directly, without parsing or error mapping."""
        return self.function(job)


_declared: List[Definition] = []


def job_type(
    name: str,
    *,
    description: str,
    payload: type,
    version: Optional[str] = None,
    timeout_secs: int = 0,
) -> Callable[[Callable[[Job[P]], Any]], Definition[P]]:
    """Declares the decorated function as this component's job type.

    `name` is what clients post as `type` (lowercase letters, digits, `-`, `_`).
    `description` is one or two sentences for humans. `payload` is a dataclass: the JSON
    Schema the host enforces is derived from it, and the function gets the payload parsed
    into it as `job.payload`. `version` defaults to `[project] version` of the
    `pyproject.toml` beside the declaring module, so the version lives in one place.
    `timeout_secs` is the default wall-clock budget of one attempt (0: the host default).

    The function returns the result: anything JSON-serialisable (dicts, lists, strings,
    numbers, dataclasses). Mistakes in the declaration raise at import time, which is
    build time for a component.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"job type name {name!r}: use lowercase letters, digits, '-' and '_'")
    if not 0 <= timeout_secs <= _U32_MAX:
        raise ValueError(f"timeout_secs must be between 0 and {_U32_MAX}, got {timeout_secs}")

    def declare(function: Callable[[Job[P]], Any]) -> Definition[P]:
        definition = Definition(
            name=name,
            version=version or _project_version(function),
            description=description,
            payload=payload,
            timeout_secs=timeout_secs,
            function=function,
        )
        definition.schema  # derive it now: an unsupported field type fails here, not per job
        _declared.append(definition)
        return definition

    return declare


def declared() -> Definition:
    """The one job type the application declared; a clear error otherwise."""
    names = sorted({d.name for d in _declared})
    if len(names) != 1:
        found = f"{len(names)} ({', '.join(names)})" if names else "none"
        raise RuntimeError(
            f"a Kiln component exports exactly one job type; app.py declared {found}. "
            "Decorate one run function with @kiln_plugin.job_type(...)."
        )
    return _declared[-1]


def run_attempt(definition: Definition, job: _types.Job) -> str:
    """Runs one attempt: parses the payload, calls the function, serialises the result.
    Returns the result JSON, or raises `JobError` (any other failure is turned into one
    here: uncaught `LlmError` and `FileError` by their kind, anything else `Permanent`
    with its traceback)."""
    try:
        payload = parse_payload(definition.payload, job.payload)
        result = definition.function(
            Job(id=job.id, job_type=job.job_type, attempt=job.attempt, payload=payload)
        )
    except JobError:
        raise
    except (LlmError, FileError) as error:
        raise error.to_job_error() from error
    except BaseException as error:  # noqa: BLE001 - everything must reach the client
        try:
            message = describe_exception(error)
        except Exception:  # noqa: BLE001 - never lose the error while describing it
            message = f"{type(error).__name__}: {error}"
        log.error(message)
        raise Permanent(message) from error
    try:
        return to_json(result)
    except (TypeError, ValueError) as error:
        raise Permanent(f"the result is not JSON-serialisable: {error}") from None


def describe_exception(error: BaseException) -> str:
    """`"ValueError: boom (at app.py:12, in run)"`, a blank line, then the traceback
    without the SDK's own frames: the first line is what a client shows, the rest is for
    the author."""
    report = traceback.TracebackException.from_exception(error)
    _tidy(report)
    summary = "".join(report.format_exception_only()).strip()
    frames = list(report.stack)
    at = next((f for f in reversed(frames) if not _is_library(f.filename)), None)
    if at is not None:
        summary += f" (at {at.filename}:{at.lineno}, in {at.name})"
    return summary + "\n\n" + "".join(report.format()).rstrip()


_SDK_DIR = os.path.dirname(__file__)
_STDLIB_DIR = os.path.dirname(os.__file__)
# Inside a component, componentize-py mounts each `-p` folder as /0, /1, ...: `/1/app.py`
# is the project's app.py, so the prefix is noise.
_MOUNT = re.compile(r"^/\d+/")


def _is_sdk(filename: str) -> bool:
    # Compared without the mount prefix, so it holds before and after `_tidy`.
    return _MOUNT.sub("", os.path.dirname(filename)) == _MOUNT.sub("", _SDK_DIR)


def _is_library(filename: str) -> bool:
    return filename.startswith(_STDLIB_DIR) or _is_sdk(filename)


def _tidy(report: traceback.TracebackException) -> None:
    """Drops the SDK's leading frames (`run_attempt`) and the component mount prefix from
    this report and the exceptions chained to it."""
    stack = report.stack
    while stack and _is_sdk(stack[0].filename):
        del stack[0]
    for frame in stack:
        frame.line  # read the source line while the real file name finds it
        frame.filename = _MOUNT.sub("", frame.filename)
    for chained in (report.__cause__, report.__context__):
        if chained is not None:
            _tidy(chained)


def _project_version(function: Callable[..., Any]) -> str:
    module = sys.modules.get(function.__module__)
    folder = Path(getattr(module, "__file__", None) or ".").parent
    pyproject = folder / "pyproject.toml"
    try:
        with open(pyproject, "rb") as file:
            return str(tomllib.load(file)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as error:
        raise ValueError(
            f"job type version: pass version=... or set [project] version in {pyproject} "
            f"({error})"
        ) from None
