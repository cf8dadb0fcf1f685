"""The ways a job can fail, as exceptions.

Raise `InvalidInput`, `Retryable` or `Permanent` from your run function: the class decides
what the host does next (the client sees it as `error.kind`). An `LlmError` you do not catch
becomes `Retryable` when it is transient and `Permanent` otherwise; a `FileError` becomes
`InvalidInput` (the payload named a file that is missing or too large) or `Retryable` (the
host could not read it now). Any other exception
that escapes becomes `Permanent` with its traceback as the message, so you see the file
and line.
"""

from __future__ import annotations

from typing import Literal, get_args

from ._bindings import files as _files
from ._bindings import llm as _llm
from ._bindings import types as _types


class JobError(Exception):
    """Base class of the three job failures; catch it to handle any of them."""

    #: The job's `error.kind` when this error ends the job.
    kind: str = "permanent"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wit(self) -> _types.JobError:
        """The contract's `job-error` value for this error."""
        return _types.JobError_Permanent(self.message)


class InvalidInput(JobError):
    """The payload is unusable even though it passed the schema (say why). Not retried."""

    kind = "invalid_input"

    def to_wit(self) -> _types.JobError:
        return _types.JobError_InvalidInput(self.message)


class Retryable(JobError):
    """A transient failure (an outage, a rate limit): the host retries the job later,
    with backoff, while attempts remain."""

    kind = "retryable"

    def to_wit(self) -> _types.JobError:
        return _types.JobError_Retryable(self.message)


class Permanent(JobError):
    """The job cannot succeed; retrying would fail the same way. Not retried."""

    kind = "permanent"


LlmErrorKind = Literal["rate_limited", "timeout", "unavailable", "rejected"]

# The contract's variant cases, with the kind and the words each one is shown with.
_LLM_CASES: dict[type, tuple[LlmErrorKind, str]] = {
    _llm.LlmError_RateLimited: ("rate_limited", "rate limited"),
    _llm.LlmError_Timeout: ("timeout", "timed out"),
    _llm.LlmError_Unavailable: ("unavailable", "unavailable"),
    _llm.LlmError_Rejected: ("rejected", "rejected"),
}


class LlmError(Exception):
    """An LLM call failed. `kind` says how: `rate_limited`, `timeout` and `unavailable` are
    transient (`transient` is true; uncaught, the job is retried later); `rejected` means
    the request itself is wrong (unknown model alias, prompt too long) and will not
    succeed on a retry."""

    def __init__(self, kind: LlmErrorKind, message: str) -> None:
        if kind not in get_args(LlmErrorKind):
            raise ValueError(f"unknown LLM error kind {kind!r}")
        words = next(w for k, w in _LLM_CASES.values() if k == kind)
        super().__init__(f"LLM call {words}: {message}")
        self.kind: LlmErrorKind = kind
        self.message = message

    @property
    def transient(self) -> bool:
        """True when retrying the job later may succeed."""
        return self.kind != "rejected"

    def to_job_error(self) -> JobError:
        """What this error becomes when it ends the job."""
        return Retryable(str(self)) if self.transient else Permanent(str(self))

    @classmethod
    def from_wit(cls, error: _llm.LlmError) -> "LlmError":
        """Wraps the contract's `llm-error` value."""
        kind, _ = _LLM_CASES[type(error)]
        return cls(kind, error.value)

    def to_wit(self) -> _llm.LlmError:
        """The contract's `llm-error` value (used by the fake host)."""
        case = next(c for c, (k, _) in _LLM_CASES.items() if k == self.kind)
        return case(self.message)


FileErrorKind = Literal["not_found", "unavailable", "too_large"]

# The contract's `file-error` cases, with the kind and the words each one is shown with.
_FILE_CASES: dict[type, tuple[FileErrorKind, str]] = {
    _files.FileError_NotFound: ("not_found", "not found"),
    _files.FileError_Unavailable: ("unavailable", "unavailable"),
}
_FILE_WORDS: dict[FileErrorKind, str] = {
    **{kind: words for kind, words in _FILE_CASES.values()},
    "too_large": "too large",
}


class FileError(Exception):
    """An input file cannot be read. `kind` says why: `not_found` (not among the files the
    payload names, or expired), `unavailable` (the host cannot read it now; transient) or
    `too_large` (over the bound given to `files.read_all`). Uncaught, `unavailable` makes
    the job retryable and the other two fail it as `invalid_input`."""

    def __init__(self, kind: FileErrorKind, message: str) -> None:
        if kind not in get_args(FileErrorKind):
            raise ValueError(f"unknown file error kind {kind!r}")
        super().__init__(f"file {_FILE_WORDS[kind]}: {message}")
        self.kind: FileErrorKind = kind
        self.message = message

    @property
    def transient(self) -> bool:
        """True when retrying the job later may succeed."""
        return self.kind == "unavailable"

    def to_job_error(self) -> JobError:
        """What this error becomes when it ends the job."""
        return Retryable(str(self)) if self.transient else InvalidInput(str(self))

    @classmethod
    def from_wit(cls, error: _files.FileError) -> "FileError":
        """Wraps the contract's `file-error` value."""
        kind, _ = _FILE_CASES[type(error)]
        return cls(kind, error.value)

    def to_wit(self) -> _files.FileError:
        """The contract's `file-error` value (used by the fake host). `too_large` is the
        SDK's own kind and has none."""
        case = next((c for c, (k, _) in _FILE_CASES.items() if k == self.kind), None)
        if case is None:
            raise ValueError(f"file error kind {self.kind!r} is not a contract case")
        return case(self.message)
