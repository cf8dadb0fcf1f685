"""The one place the SDK reaches the host, so tests can swap it for a fake.

Inside a component the host is the contract's imports (`wit_world.imports.*`). Unit tests
install a `kiln_plugin.testing.FakeHost`, which implements the same methods with the same
generated types, so job code runs unchanged in both.
"""

from __future__ import annotations

from typing import List, Optional, Protocol

from ._bindings import artifacts, files, llm, log, progress


class Host(Protocol):
    """What the SDK needs from the host: the contract's imports, one method each. A call
    whose contract returns `result` raises `componentize_py_types.Err(error)` when it
    fails, as the generated import functions do."""

    def report(self, percent: int, message: str) -> None: ...

    def partial(self, name: str, data: str) -> None: ...

    def cancelled(self) -> bool: ...

    def complete(self, request: llm.Request) -> llm.Response:
        """Raises `Err(llm.LlmError)` when the call fails."""
        ...

    def complete_all(self, requests: List[llm.Request]) -> list:
        """One `Ok(Response)` or `Err(LlmError)` per request, in order."""
        ...

    def embed(self, model: Optional[str], texts: List[str]) -> llm.Embeddings:
        """Raises `Err(llm.LlmError)` when the call fails."""
        ...

    def file_stat(self, id: str) -> files.FileInfo:
        """Raises `Err(files.FileError)` when the file cannot be read."""
        ...

    def file_read(self, id: str, offset: int, length: int) -> bytes:
        """Raises `Err(files.FileError)` when the file cannot be read."""
        ...

    def artifact_write(self, name: str, content_type: str, data: bytes) -> None:
        """Raises `Err(str)` when the write is refused."""
        ...

    def write(self, level: log.Level, message: str) -> None: ...


class ComponentHost:
    """The real host: the imports the component was linked with."""

    def report(self, percent: int, message: str) -> None:
        progress.report(percent, message)

    def partial(self, name: str, data: str) -> None:
        progress.partial(name, data)

    def cancelled(self) -> bool:
        return progress.cancelled()

    def complete(self, request: llm.Request) -> llm.Response:
        return llm.complete(request)

    def complete_all(self, requests: List[llm.Request]) -> list:
        return llm.complete_all(requests)

    def embed(self, model: Optional[str], texts: List[str]) -> llm.Embeddings:
        return llm.embed(model, texts)

    def file_stat(self, id: str) -> files.FileInfo:
        return files.stat(id)

    def file_read(self, id: str, offset: int, length: int) -> bytes:
        return files.read(id, offset, length)

    def artifact_write(self, name: str, content_type: str, data: bytes) -> None:
        artifacts.write(name, content_type, data)

    def write(self, level: log.Level, message: str) -> None:
        log.write(level, message)


_current: Host = ComponentHost()


def current() -> Host:
    """The host calls go to right now."""
    return _current


def install(host: Host) -> Host:
    """Makes `host` the target of every SDK call and returns the previous one."""
    global _current
    previous, _current = _current, host
    return previous
