"""Output files. An artifact is stored with the job, listed in its JSON as `artifacts` and
downloaded from `GET /v1/jobs/{id}/artifacts/{name}`. Only the artifacts of the attempt
that completes the job are kept. The host bounds their total size per job
(`artifact_limit`) and fails the job when it is passed.

    artifacts.write("summary.md", "text/markdown", "# Summary\\n")
    artifacts.write("summary.md", "text/markdown", "More.\\n")  # appends

    with artifacts.Writer("rows.csv", "text/csv") as out:       # one host call per write
        csv.writer(out).writerows(rows)
"""

from __future__ import annotations

from typing import Any, Union

from . import _host
from ._bindings import Err
from .errors import Permanent

#: Most bytes sent to the host per call; longer writes are split.
CHUNK = 1 << 20

Data = Union[bytes, bytearray, memoryview, str]


def write(name: str, content_type: str, data: Data) -> None:
    """Appends `data` (bytes, or text written as UTF-8) to artifact `name` (1 to 128
    letters, digits, `.`, `_`, `-`; not starting with `.`), creating it with
    `content_type` on the first write. A bad name, or a content type different from the
    first write's, raises `Permanent` (a bug in the job type)."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    pieces = [raw[i : i + CHUNK] for i in range(0, len(raw), CHUNK)] or [b""]
    for piece in pieces:
        try:
            _host.current().artifact_write(name, content_type, piece)
        except Err as error:
            raise Permanent(str(error.value)) from None


class Writer:
    """Artifact `name` of `content_type`, created empty now and appended to by each
    `write` (bytes or text; one host call each, so write in sizeable pieces). It has the
    `write` method `csv.writer`, `json.dump` and `print(file=...)` need, and is a context
    manager for symmetry with files (closing it does nothing more)."""

    def __init__(self, name: str, content_type: str) -> None:
        self.name = name
        self.content_type = content_type
        self.closed = False
        write(name, content_type, b"")

    def write(self, data: Data) -> int:
        """Appends `data`; returns how much was given (characters or bytes)."""
        if self.closed:
            raise ValueError(f"artifact {self.name!r}: write after close")
        write(self.name, self.content_type, data)
        return len(data)

    def flush(self) -> None:
        """Nothing to do: every write reaches the host at once."""

    def close(self) -> None:
        """Refuses later writes."""
        self.closed = True

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
