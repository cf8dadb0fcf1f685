"""Input files: uploads (`POST /v1/files`) that the job's payload names.

Declare the payload field as `kiln.FileId` (a string holding the file id; its schema
says `"format": "kiln-file"`): the host then refuses a job naming a file that does not
exist or belongs to another tenant, and lets this job read it. Read in chunks with
`chunks` or a `Reader` (a binary file object), or whole with `read_all` under a size
bound you choose:

    @dataclass
    class Payload:
        document: kiln.FileId

    info = files.stat(job.payload.document)                # .size, .content_type, .sha256
    data = files.read_all(job.payload.document, 16 << 20)  # refuses a bigger file
    for chunk in files.chunks(job.payload.document):       # at most CHUNK bytes each
        ...

A failed read raises `FileError`; uncaught, a missing or oversized file fails the job as
`invalid_input` and a host that cannot read it now makes it `retryable`.
"""

from __future__ import annotations

import io
from typing import Iterator, Optional

from . import _host
from ._bindings import Err
from ._bindings import files as _wit
from .errors import FileError

FileInfo = _wit.FileInfo

#: Most bytes one host read returns (1 MiB).
CHUNK = 1 << 20


def stat(id: str) -> FileInfo:
    """The file's metadata: `.id`, `.size` (bytes), `.content_type` (as uploaded, e.g.
    `application/pdf`) and `.sha256` (lowercase hex). Raises `FileError`."""
    try:
        return _host.current().file_stat(id)
    except Err as error:
        raise FileError.from_wit(error.value) from None


def read(id: str, offset: int, length: int = CHUNK) -> bytes:
    """Up to `length` bytes (at most `CHUNK`) of file `id` from byte `offset`: fewer at the
    end of the file, none past it. One host call. Raises `FileError`."""
    if offset < 0 or length < 0:
        raise ValueError(f"files.read: offset and length must be 0 or more, got {offset}, {length}")
    try:
        return bytes(_host.current().file_read(id, offset, min(length, CHUNK)))
    except Err as error:
        raise FileError.from_wit(error.value) from None


def chunks(id: str) -> Iterator[bytes]:
    """The file's bytes from the start, in chunks of at most `CHUNK` bytes, one host call
    each. Raises `FileError`."""
    offset = 0
    while True:
        chunk = read(id, offset)
        if not chunk:
            return
        offset += len(chunk)
        yield chunk


def read_all(id: str, max_bytes: int) -> bytes:
    """The whole file, refused with a `FileError` of kind `too_large` when it is over
    `max_bytes` (checked before anything is read)."""
    info = stat(id)
    if info.size > max_bytes:
        raise FileError(
            "too_large", f"{id!r} is {info.size} bytes; this job reads at most {max_bytes}"
        )
    return b"".join(chunks(id))


class Reader(io.RawIOBase):
    """File `id` as a read-only binary file object, read from the start in host-sized
    chunks: `reader.read(n)`, `readinto`, `readline`, iteration by lines. Wrap it for text:
    `io.TextIOWrapper(io.BufferedReader(files.Reader(id)), encoding="utf-8")`. A failed
    host read raises `FileError`."""

    def __init__(self, id: str) -> None:
        super().__init__()
        self.id = id
        self._offset = 0
        self._buffer = b""
        self._at = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def next_chunk(self) -> Optional[bytes]:
        """The next chunk the host returns (what is left of a partly read one first), or
        None at the end of the file."""
        if self._at < len(self._buffer):
            rest = self._buffer[self._at :]
            self._buffer, self._at = b"", 0
            return rest
        if self._done:
            return None
        chunk = read(self.id, self._offset)
        if not chunk:
            self._done = True
            return None
        self._offset += len(chunk)
        return chunk

    def readinto(self, buffer) -> int:  # noqa: ANN001 - any writable bytes-like object
        if self._at == len(self._buffer):
            chunk = self.next_chunk()
            if chunk is None:
                return 0
            self._buffer, self._at = chunk, 0
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._buffer) - self._at)
        view[:n] = self._buffer[self._at : self._at + n]
        self._at += n
        return n
