"""A fake host for unit tests: run your job type natively, without a component.

    from kiln_plugin.testing import FakeHost
    import app

    host = FakeHost(llm=lambda request: "Ada")     # or llm=["Ada", "Linus"], or omitted
    result = host.run({"names": ["Ada"]})          # the result, decoded from JSON
    assert host.progress[-1] == (100, "Greeted everyone")

`run` goes through the same payload parsing, result serialisation and error mapping as a
deployed job: a payload the host would refuse raises `InvalidInput`, a failed job raises
its `JobError` (`Permanent` with the traceback for an uncaught exception).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Union

from . import _host
from ._bindings import Err, Ok
from ._bindings import types as _types
from ._job import Definition, declared, run_attempt
from .errors import LlmError
from .llm import Request, Response, Role

#: How the fake answers LLM calls: a function of the request (returning the text or a
#: `Response`, or raising `LlmError`), or canned texts used in call order.
Answerer = Union[Callable[[Request], Union[str, Response]], Sequence[str]]


@dataclass
class LogLine:
    """One `log` call: `level` is `trace`, `debug`, `info`, `warn` or `error`."""

    level: str
    message: str


@dataclass
class FakeHost:
    """Records what a job does and answers its LLM calls. Attributes after a run:

    * `progress`: `(percent, message)` per report, as the host would emit them (clamped,
      never going down);
    * `partials`: `(name, data)` per partial, `data` decoded from JSON;
    * `logs`: `LogLine`s;
    * `requests`: every LLM `Request`, in call order;
    * `tokens`: streamed output per stream label (what `token` events would carry).

    Set `cancel_requested` to make `kiln_plugin.cancelled()` return True.
    """

    llm: Optional[Answerer] = None
    cancel_requested: bool = False
    progress: List[tuple[int, str]] = field(default_factory=list)
    partials: List[tuple[str, Any]] = field(default_factory=list)
    logs: List[LogLine] = field(default_factory=list)
    requests: List[Request] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    _canned_used: int = field(default=0, init=False, repr=False)

    def run(
        self,
        payload: Union[dict, str],
        *,
        job_type: Optional[Definition] = None,
        attempt: int = 1,
        job_id: str = "00000000-0000-0000-0000-000000000000",
    ) -> Any:
        """Runs one attempt of `job_type` (default: the one job type declared, i.e. app's)
        on `payload` (a dict, or JSON text to test malformed input) and returns the result
        decoded from JSON. Raises the job's `JobError` if it fails."""
        definition = job_type or declared()
        text = payload if isinstance(payload, str) else json.dumps(payload)
        job = _types.Job(id=job_id, job_type=definition.name, payload=text, attempt=attempt)
        previous = _host.install(self)
        try:
            return json.loads(run_attempt(definition, job))
        finally:
            _host.install(previous)

    def partial_data(self, name: str) -> Any:
        """The data of the last partial called `name`; `KeyError` if there is none."""
        for partial_name, data in reversed(self.partials):
            if partial_name == name:
                return data
        raise KeyError(f"no partial named {name!r}; got {[n for n, _ in self.partials]}")

    # The host side: the SDK calls these through kiln_plugin._host.

    def report(self, percent: int, message: str) -> None:
        last = self.progress[-1][0] if self.progress else 0
        self.progress.append((max(last, min(100, percent)), message))

    def partial(self, name: str, data: str) -> None:
        self.partials.append((name, json.loads(data)))

    def cancelled(self) -> bool:
        return self.cancel_requested

    def complete(self, request: Request) -> Response:
        outcome = self.complete_all([request])[0]
        if isinstance(outcome, Err):
            raise outcome
        return outcome.value

    def complete_all(self, requests: List[Request]) -> list:
        return [self._answer(request) for request in requests]

    def write(self, level: Any, message: str) -> None:
        self.logs.append(LogLine(level.name.lower(), message))

    def _answer(self, request: Request) -> Union[Ok, Err]:
        self.requests.append(request)
        try:
            answer = self._answerer()(request)
        except LlmError as error:
            return Err(error.to_wit())
        if isinstance(answer, str):
            answer = Response(
                text=answer,
                model="fake",
                input_tokens=sum(len(m.content.split()) for m in request.messages),
                output_tokens=len(answer.split()),
            )
        label = request.stream_label
        if label is not None:
            self.tokens[label] = self.tokens.get(label, "") + answer.text
        return Ok(answer)

    def _answerer(self) -> Callable[[Request], Union[str, Response]]:
        if callable(self.llm):
            return self.llm
        if self.llm is None:
            return _default_answer
        return self._next_canned

    def _next_canned(self, request: Request) -> str:
        assert self.llm is not None and not callable(self.llm)
        if self._canned_used >= len(self.llm):
            raise AssertionError(
                f"FakeHost ran out of canned LLM answers: it had {len(self.llm)}, "
                f"and this is call {len(self.requests)}"
            )
        self._canned_used += 1
        return self.llm[self._canned_used - 1]


def _default_answer(request: Request) -> str:
    """A recognisable stand-in: `{}` for JSON requests, else a line quoting the prompt."""
    if request.json_output:
        return "{}"
    prompt = next((m.content for m in reversed(request.messages) if m.role == Role.USER), "")
    return f"fake answer to: {prompt[:60]}"
