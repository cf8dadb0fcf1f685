"""The ways a job can fail, as exceptions.

Raise `InvalidInput`, `Retryable` or `Permanent` from your run function: the class decides
what the host does next (the client sees it as `error.kind`). An `LlmError` you do not catch
becomes `Retryable` when it is transient and `Permanent` otherwise. Any other exception
that escapes becomes `Permanent` with its traceback as the message, so you see the file
and line.
"""

from __future__ import annotations

from typing import Literal, get_args

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
