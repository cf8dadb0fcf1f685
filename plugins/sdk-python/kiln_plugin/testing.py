"""A fake host for unit tests: run your job type natively, without a component.

    from kiln_plugin.testing import FakeHost
    import app

    host = FakeHost(llm=lambda request: "Ada")     # or llm=["Ada", "Linus"], or omitted
    result = host.run({"names": ["Ada"]})          # the result, decoded from JSON
    assert host.progress[-1] == (100, "Greeted everyone")

`run` goes through the same payload parsing, result serialisation and error mapping as a
deployed job: a payload the host would refuse raises `InvalidInput`, a failed job raises
its `JobError` (`Permanent` with the traceback for an uncaught exception).

Input files, answers that call tools, and what the job wrote or embedded:

    host = FakeHost(
        files={"f1": ("text/plain", b"some text")},
        llm=[Response.calls([ToolCall("c1", "add", {"a": 2, "b": 3})]), "5"],
    )
    host.run({"file": "f1"})
    assert host.artifacts["summary.md"].text == "..."
    assert host.embedded == [["chunk one", "chunk two"]]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

from . import _host
from ._bindings import Err, Ok
from ._bindings import files as _files
from ._bindings import llm as _llm
from ._bindings import types as _types
from ._job import Definition, declared, run_attempt
from .errors import FileError, LlmError
from .files import CHUNK
from .llm import Request, Response, Role, ToolCall, is_json

__all__ = ["Answer", "Answerer", "Artifact", "FakeHost", "LogLine", "Response", "ToolCall"]

#: One answer to an LLM call: the text, or a `Response` (e.g. `Response.calls([...])`).
Answer = Union[str, Response]

#: How the fake answers LLM calls: a function of the request (returning an `Answer`, or
#: raising `LlmError`), or canned answers used in call order.
Answerer = Union[Callable[[Request], Answer], Sequence[Answer]]

#: An input file: its bytes (content type `application/octet-stream`), its text (UTF-8,
#: `text/plain`), or `(content_type, bytes or text)`.
FakeFile = Union[bytes, str, Tuple[str, Union[bytes, str]]]

#: How the fake embeds: a function of the texts and the model alias returning one vector
#: per text (or raising `LlmError`). Default: deterministic unit vectors of 8 numbers.
Embedder = Callable[[List[str], Optional[str]], List[List[float]]]

_ARTIFACT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


@dataclass
class LogLine:
    """One `log` call: `level` is `trace`, `debug`, `info`, `warn` or `error`."""

    level: str
    message: str


@dataclass
class Artifact:
    """One artifact the job wrote, its appends joined."""

    content_type: str
    data: bytes = b""

    @property
    def text(self) -> str:
        """The data decoded as UTF-8."""
        return self.data.decode("utf-8")


@dataclass
class FakeHost:
    """Records what a job does and answers its host calls. Attributes after a run:

    * `progress`: `(percent, message)` per report, as the host would emit them (clamped,
      never going down);
    * `partials`: `(name, data)` per partial, `data` decoded from JSON;
    * `logs`: `LogLine`s;
    * `requests`: every LLM `Request`, in call order;
    * `tokens`: streamed output per stream label (what `token` events would carry);
    * `embedded`: the texts of every `llm.embed` call, in order;
    * `artifacts`: `{name: Artifact}` in the order they were created.

    `files` are the input files the job may read, by id (see `FakeFile`); `embedder`
    answers `llm.embed`. Set `cancel_requested` to make `kiln_plugin.cancelled()` return
    True.
    """

    llm: Optional[Answerer] = None
    cancel_requested: bool = False
    files: Mapping[str, FakeFile] = field(default_factory=dict)
    embedder: Optional[Embedder] = None
    progress: List[Tuple[int, str]] = field(default_factory=list)
    partials: List[Tuple[str, Any]] = field(default_factory=list)
    logs: List[LogLine] = field(default_factory=list)
    requests: List[Request] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    embedded: List[List[str]] = field(default_factory=list)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
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

    def complete(self, request: Request) -> _llm.Response:
        outcome = self.complete_all([request])[0]
        if isinstance(outcome, Err):
            raise outcome
        return outcome.value

    def complete_all(self, requests: List[Request]) -> list:
        return [self._answer(request) for request in requests]

    def embed(self, model: Optional[str], texts: List[str]) -> _llm.Embeddings:
        self.embedded.append(list(texts))
        try:
            vectors = (self.embedder or _unit_vectors)(list(texts), model)
        except LlmError as error:
            raise Err(error.to_wit()) from None
        if len(vectors) != len(texts):
            raise AssertionError(
                f"FakeHost embedder returned {len(vectors)} vectors for {len(texts)} texts"
            )
        return _llm.Embeddings(
            vectors=[[float(x) for x in v] for v in vectors],
            model="fake",
            input_tokens=sum(len(text.split()) for text in texts),
        )

    def file_stat(self, id: str) -> _files.FileInfo:
        content_type, data = self._file(id)
        return _files.FileInfo(
            id=id,
            size=len(data),
            content_type=content_type,
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def file_read(self, id: str, offset: int, length: int) -> bytes:
        _, data = self._file(id)
        return data[offset : offset + min(length, CHUNK)]

    def artifact_write(self, name: str, content_type: str, data: bytes) -> None:
        if not _ARTIFACT_NAME.fullmatch(name):
            raise Err(f"the artifact name {name!r} is not allowed")
        artifact = self.artifacts.get(name)
        if artifact is None:
            self.artifacts[name] = Artifact(content_type, bytes(data))
        elif artifact.content_type != content_type:
            raise Err(
                f"the artifact {name!r} was created as {artifact.content_type}, "
                f"not {content_type}"
            )
        else:
            artifact.data += bytes(data)

    def write(self, level: Any, message: str) -> None:
        self.logs.append(LogLine(level.name.lower(), message))

    def _file(self, id: str) -> Tuple[str, bytes]:
        if id not in self.files:
            raise Err(FileError("not_found", f"no file {id!r} in this test").to_wit())
        spec = self.files[id]
        if isinstance(spec, tuple):
            content_type, data = spec
        else:
            content_type = "text/plain" if isinstance(spec, str) else "application/octet-stream"
            data = spec
        return content_type, data.encode("utf-8") if isinstance(data, str) else bytes(data)

    def _answer(self, request: Request) -> Union[Ok, Err]:
        self.requests.append(request)
        try:
            answer = self._answerer()(request)
        except LlmError as error:
            return Err(error.to_wit())
        input_tokens = sum(len(m.content.split()) for m in request.messages)
        if isinstance(answer, str):
            answer = Response(
                text=answer,
                model="fake",
                input_tokens=input_tokens,
                output_tokens=len(answer.split()),
            )
        elif not isinstance(answer, Response):
            raise TypeError(
                f"FakeHost: an LLM answer is text or a Response, got {type(answer).__name__}"
            )
        elif answer.input_tokens == 0:
            answer = dataclasses.replace(answer, input_tokens=input_tokens)
        offered = {tool.name for tool in request.tools}
        for call in answer.tool_calls:
            if call.name not in offered:
                raise AssertionError(
                    f"FakeHost: the answer calls tool {call.name!r}, which the request does "
                    f"not offer (it offers {sorted(offered)})"
                )
        label = request.stream_label
        if label is not None:
            self.tokens[label] = self.tokens.get(label, "") + answer.text
        return Ok(answer.to_wit())

    def _answerer(self) -> Callable[[Request], Answer]:
        if callable(self.llm):
            return self.llm
        if self.llm is None:
            return _default_answer
        return self._next_canned

    def _next_canned(self, request: Request) -> Answer:
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
    if is_json(request):
        return "{}"
    prompt = next((m.content for m in reversed(request.messages) if m.role == Role.USER), "")
    return f"fake answer to: {prompt[:60]}"


def _unit_vectors(texts: List[str], model: Optional[str]) -> List[List[float]]:
    """One deterministic unit vector of 8 numbers per text: equal texts, equal vectors."""
    vectors = []
    for text in texts:
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        raw = [int.from_bytes(digest[i : i + 4], "little") / 2**31 - 1.0 for i in range(0, 32, 4)]
        norm = math.sqrt(sum(x * x for x in raw)) or 1.0
        vectors.append([x / norm for x in raw])
    return vectors
