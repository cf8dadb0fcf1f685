"""Calls to large language models through the providers the operator configured.

The plugin never sees a key, a URL or a provider: it names a model alias (or none, meaning
`default`). Run one request with `complete`, or many at once with `complete_all` (the
host runs them concurrently under the providers' limits; prefer it whenever the items are
independent):

    answer = llm.complete("Name a tavern.", system="You are terse.", max_tokens=20,
                          stream="tavern")
    answers = llm.complete_all([llm.request(f"Name tavern {i}.") for i in range(3)])

Contract 0.2.0 adds, on the same `request`:

* `schema={...}`: the answer must match a JSON Schema; the host uses the provider's
  structured-output mode and validates the answer before you get it (`answer.json()`);
* `tools=[llm.tool(...)]`: tools the model may call. A `Response` with `tool_calls` is
  answered with `llm.with_tool_calls` and one `llm.with_tool_result` per call, then a
  new call:

      request = llm.request("What is 2 + 3?", tools=[ADD])
      answer = llm.complete(request)
      while answer.tool_calls:
          request = llm.with_tool_calls(request, answer)
          for call in answer.tool_calls:
              args = call.args()
              request = llm.with_tool_result(request, call, {"sum": args["a"] + args["b"]})
          answer = llm.complete(request)

* `embed(texts)`: vectors for texts, from the operator's `embedding` alias.

`Request`, `Message`, `Role`, `Tool`, `FinishReason` and `Embeddings` are the contract's
own types, generated from `wit/plugin.wit`; `Response` and `ToolCall` are the SDK's, with
the usage counts flattened (`answer.input_tokens`). A failed call raises `LlmError`;
uncaught, a transient one (rate limit, timeout, outage) makes the job retryable and a
rejected one fails it for good.
"""

from __future__ import annotations

import dataclasses
import json as _json
import re
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Sequence, Union

from . import _host
from ._bindings import Err
from ._bindings import llm as _wit
from ._events import to_json
from .errors import LlmError

Role = _wit.Role
Message = _wit.Message
Request = _wit.Request
Tool = _wit.Tool
FinishReason = _wit.FinishReason
Embeddings = _wit.Embeddings

Prompt = Union[str, Sequence[Message]]

_U32_MAX = 2**32 - 1
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class ToolCall:
    """A tool the model asked to be run."""

    #: The provider's id of the call; answer it with `with_tool_result` / `tool_result`.
    id: str
    #: The tool's name, one of the request's `tools`.
    name: str
    #: The arguments as JSON text of an object (the host checked that it parses). A dict
    #: given here, as tests do, is turned into JSON text.
    arguments: str

    def __post_init__(self) -> None:
        if not isinstance(self.arguments, str):
            object.__setattr__(self, "arguments", to_json(self.arguments))

    def args(self) -> Any:
        """The arguments parsed from JSON (a dict). Validate them yourself: the host only
        checks that they parse. Raises `ValueError` when they do not."""
        try:
            return _json.loads(self.arguments)
        except _json.JSONDecodeError as error:
            message = f"tool call {self.name!r}: the arguments are not JSON: {error}"
            raise ValueError(message) from None

    @classmethod
    def from_wit(cls, call: _wit.ToolCall) -> "ToolCall":
        """Wraps the contract's `tool-call`."""
        return cls(id=call.id, name=call.name, arguments=call.arguments)

    def to_wit(self) -> _wit.ToolCall:
        """The contract's `tool-call`."""
        return _wit.ToolCall(id=self.id, name=self.name, arguments=self.arguments)


@dataclass
class Response:
    """A finished completion. The fields after `text` have defaults, so tests can write
    `Response("an answer")` or `Response.calls([...])`."""

    #: The model's output (JSON text when the request asked for JSON). May be empty when
    #: the model only called tools.
    text: str
    #: The concrete model that answered, e.g. `gpt-4o-mini` or `offline`.
    model: str = "fake"
    #: Prompt tokens, as the provider counted them (cached ones included).
    input_tokens: int = 0
    #: Output tokens, as the provider counted them (reasoning ones included).
    output_tokens: int = 0
    #: Prompt tokens served from the provider's prompt cache.
    cached_input_tokens: int = 0
    #: Output tokens spent on hidden reasoning.
    reasoning_tokens: int = 0
    #: The tools the model asked to be run, in order.
    tool_calls: List[ToolCall] = field(default_factory=list)
    #: Why the model stopped: `FinishReason.STOP`, `LENGTH`, `TOOL_CALLS` or `OTHER`.
    finish_reason: FinishReason = FinishReason.STOP

    @classmethod
    def calls(cls, calls: Sequence[ToolCall], text: str = "", **fields: Any) -> "Response":
        """An answer that calls tools (for tests and fakes)."""
        return cls(text=text, tool_calls=list(calls), finish_reason=FinishReason.TOOL_CALLS,
                   **fields)

    def json(self) -> Any:
        """The text parsed as JSON (strictly: use `parse_json` for answers that may carry
        prose around it). Raises `ValueError` when it does not parse."""
        return _json.loads(self.text)

    @classmethod
    def from_wit(cls, response: _wit.Response) -> "Response":
        """The contract's `response`, usage flattened."""
        usage = response.usage
        return cls(
            text=response.text,
            model=response.model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            tool_calls=[ToolCall.from_wit(call) for call in response.tool_calls],
            finish_reason=response.finish_reason,
        )

    def to_wit(self) -> _wit.Response:
        """The contract's `response` (used by the fake host)."""
        return _wit.Response(
            text=self.text,
            tool_calls=[call.to_wit() for call in self.tool_calls],
            finish_reason=self.finish_reason,
            model=self.model,
            usage=_wit.Usage(
                input_tokens=self.input_tokens,
                output_tokens=self.output_tokens,
                cached_input_tokens=self.cached_input_tokens,
                reasoning_tokens=self.reasoning_tokens,
            ),
        )


def _message(role: Role, content: str) -> Message:
    return Message(role=role, content=content, tool_calls=[], tool_call_id=None)


def system(content: str) -> Message:
    """A system message: instructions for the model."""
    return _message(Role.SYSTEM, content)


def user(content: str) -> Message:
    """A user message."""
    return _message(Role.USER, content)


def assistant(content: Union[str, Response]) -> Message:
    """An assistant message: an earlier answer, for multi-turn prompts. Given a `Response`,
    it keeps the tool calls the model made, as a tool-calling conversation needs."""
    if isinstance(content, Response):
        return Message(
            role=Role.ASSISTANT,
            content=content.text,
            tool_calls=[call.to_wit() for call in content.tool_calls],
            tool_call_id=None,
        )
    return _message(Role.ASSISTANT, content)


def tool_result(call: Union[ToolCall, str], content: Any) -> Message:
    """A `tool` message: the result of the tool call `call` (a `ToolCall` or its id).
    `content` is text, or anything `to_json` accepts (sent as JSON text)."""
    call_id = call.id if isinstance(call, ToolCall) else call
    text = content if isinstance(content, str) else to_json(content)
    return Message(role=Role.TOOL, content=text, tool_calls=[], tool_call_id=call_id)


def tool(name: str, description: str, parameters: Mapping[str, Any]) -> Tool:
    """A tool the model may call: `name` (letters, digits, `_`, `-`, at most 64),
    `description` (what it does, for the model) and `parameters`, the JSON Schema of its
    arguments (an object schema). Declare tools at module level: a mistake then fails
    the build."""
    if not _TOOL_NAME.fullmatch(name):
        raise ValueError(f"tool name {name!r}: use 1 to 64 letters, digits, '_' and '-'")
    if not isinstance(parameters, Mapping):
        raise TypeError(f"tool {name!r}: parameters must be a JSON Schema object (a dict)")
    return Tool(name=name, description=description, parameters=to_json(dict(parameters)))


def request(
    prompt: Prompt,
    *,
    system: Optional[str] = None,
    model: Optional[str] = None,
    max_tokens: Optional[int] = None,
    temperature: Optional[float] = None,
    json: bool = False,
    schema: Optional[Mapping[str, Any]] = None,
    schema_name: str = "answer",
    tools: Sequence[Tool] = (),
    stream: Optional[str] = None,
) -> Request:
    """Builds one request.

    `prompt` is the user message, or a list of messages (`llm.user(...)`,
    `llm.assistant(...)`, `llm.tool_result(...)`) for a conversation; the model answers
    the last one. `system` goes first. `model` is an alias from the operator's `[models]`
    table (None means `default`; an unknown alias fails with kind `rejected`).
    `max_tokens` and `temperature` default to the provider's.

    `json=True` asks for a JSON object (the provider's JSON mode where it has one): say in
    the prompt which keys you expect, and parse with `parse_json`. `schema` (a JSON
    Schema, as a dict) goes further: the answer must match it. The host sends it as the
    provider's structured-output mode under `schema_name`, validates the answer, asks
    once more when it does not match and fails the call with kind `rejected` if the
    second answer misses too; read it with `answer.json()`.

    `tools` are the tools the model may call (`llm.tool(...)`); see `with_tool_calls`.
    `stream` is a label: the output's tokens then stream to the job's clients as `token`
    events `{label, delta}` while they arrive (you still get the whole text back).
    """
    messages = [user(prompt)] if isinstance(prompt, str) else list(prompt)
    if system is not None:
        messages.insert(0, _message(Role.SYSTEM, system))
    if not messages:
        raise ValueError("an LLM request needs at least one message")
    if max_tokens is not None and not 0 <= max_tokens <= _U32_MAX:
        raise ValueError(f"max_tokens must be between 0 and {_U32_MAX}, got {max_tokens}")
    output: _wit.Output
    if schema is not None:
        if not isinstance(schema, Mapping):
            raise TypeError("schema must be a JSON Schema object (a dict)")
        spec = _wit.JsonSchema(name=schema_name, schema=to_json(dict(schema)))
        output = _wit.Output_JsonSchema(spec)
    elif json:
        output = _wit.Output_Json()
    else:
        output = _wit.Output_Text()
    for declared in tools:
        if not isinstance(declared, Tool):
            raise TypeError(f"tools: expected llm.tool(...) values, got {type(declared).__name__}")
    return Request(
        messages=messages,
        model=model,
        max_tokens=max_tokens,
        temperature=None if temperature is None else float(temperature),
        output=output,
        tools=list(tools),
        stream_label=stream,
    )


def with_tool_calls(request: Request, response: Response) -> Request:
    """A copy of `request` with the model's answer `response` (its text and its tool
    calls) added as an assistant message: the first step of continuing a tool-calling
    conversation. Add one `with_tool_result` per call next, then call the model again."""
    return dataclasses.replace(request, messages=[*request.messages, assistant(response)])


def with_tool_result(request: Request, call: Union[ToolCall, str], content: Any) -> Request:
    """A copy of `request` with the result of tool call `call` added (see `tool_result`)."""
    return dataclasses.replace(request, messages=[*request.messages, tool_result(call, content)])


def is_json(request: Request) -> bool:
    """Whether `request` asks for JSON output (`json=True` or a `schema`)."""
    return not isinstance(request.output, _wit.Output_Text)


def output_schema(request: Request) -> Optional[Any]:
    """The JSON Schema `request` requires of its answer (parsed), or None."""
    if isinstance(request.output, _wit.Output_JsonSchema):
        return _json.loads(request.output.value.schema)
    return None


def tool_names(request: Request) -> List[str]:
    """The names of the tools `request` declares."""
    return [declared.name for declared in request.tools]


def complete(prompt: Union[Prompt, Request], **options: Any) -> Response:
    """Runs one completion and returns its `Response` (`.text`, `.tool_calls`,
    `.finish_reason`, `.model`, `.input_tokens`, `.output_tokens`,
    `.cached_input_tokens`, `.reasoning_tokens`). Takes a `Request`, or the arguments of
    `request`. Blocks this plugin (not the host) until the answer is complete. Raises
    `LlmError`."""
    if isinstance(prompt, Request):
        if options:
            raise TypeError("pass options to llm.request(), not with a built Request")
        req = prompt
    else:
        req = request(prompt, **options)
    try:
        return Response.from_wit(_host.current().complete(req))
    except Err as error:
        raise LlmError.from_wit(error.value) from None


def complete_all(
    requests: Sequence[Request], *, return_errors: bool = False
) -> List[Any]:
    """Runs several completions concurrently, under the providers' limits, and returns
    their responses in the order of `requests`.

    If any call fails it raises the most serious `LlmError`: a rejected one if any (so a
    request that can never succeed is not retried just because another one was rate
    limited first), else the first transient one. With `return_errors=True` it raises
    nothing and returns a `Response` or an `LlmError` per request instead.
    """
    if not requests:
        return []
    outcomes: List[Any] = []
    for outcome in _host.current().complete_all(list(requests)):
        if isinstance(outcome, Err):
            outcomes.append(LlmError.from_wit(outcome.value))
        else:
            outcomes.append(Response.from_wit(outcome.value))
    if return_errors:
        return outcomes
    errors = [o for o in outcomes if isinstance(o, LlmError)]
    if errors:
        raise next((e for e in errors if not e.transient), errors[0])
    return outcomes


def embed(texts: Sequence[str], model: Optional[str] = None) -> Embeddings:
    """Embeds `texts` with the model alias `model` (None: the operator's `embedding`
    alias), under the same limits as completions, and returns `Embeddings` (`.vectors`,
    one list of floats per text in order, `.model`, `.input_tokens`). Journaled: a
    retried job does not pay twice. An empty list returns at once without a host call.
    Raises `LlmError`."""
    if isinstance(texts, str):
        raise TypeError("llm.embed takes a list of texts, not one string")
    texts = [str(text) for text in texts]
    if not texts:
        return Embeddings(vectors=[], model="", input_tokens=0)
    try:
        return _host.current().embed(model, texts)
    except Err as error:
        raise LlmError.from_wit(error.value) from None


def parse_json(answer: Union[Response, str]) -> Any:
    """Parses a model's answer as JSON. Forgives what models add around it: a Markdown code
    fence, or prose before the first `{`/`[` and after the last `}`/`]`. Raises
    `ValueError` (a `json.JSONDecodeError`) when no JSON is there."""
    text = _text(answer).strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0].strip()
    try:
        return _json.loads(text)
    except _json.JSONDecodeError:
        starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
        end = max(text.rfind("}"), text.rfind("]"))
        if not starts or end < min(starts):
            raise
        return _json.loads(text[min(starts) : end + 1])


def json_or_text(answer: Union[Response, str]) -> Any:
    """The answer parsed as JSON if it parses (see `parse_json`), else its trimmed text: a
    forgiving way to keep structured output."""
    try:
        return parse_json(answer)
    except ValueError:
        return _text(answer).strip()


def _text(answer: Union[Response, str]) -> str:
    return answer if isinstance(answer, str) else answer.text
