"""Calls to large language models through the providers the operator configured.

The plugin never sees a key, a URL or a provider: it names a model alias (or none, meaning
`default`). Run one request with `complete`, or many at once with `complete_all` (the
host runs them concurrently under the providers' limits; prefer it whenever the items are
independent):

    answer = llm.complete("Name a tavern.", system="You are terse.", max_tokens=20,
                          stream="tavern")
    answers = llm.complete_all([llm.request(f"Name tavern {i}.") for i in range(3)])

`Request`, `Message`, `Role` and `Response` are the contract's own types, generated from
`wit/plugin.wit`. A failed call raises `LlmError`; uncaught, a transient one (rate limit,
timeout, outage) makes the job retryable and a rejected one fails it for good.
"""

from __future__ import annotations

import json as _json
from typing import Any, List, Optional, Sequence, Union

from . import _host
from ._bindings import Err
from ._bindings import llm as _wit
from .errors import LlmError

Role = _wit.Role
Message = _wit.Message
Request = _wit.Request
Response = _wit.Response

Prompt = Union[str, Sequence[Message]]

_U32_MAX = 2**32 - 1


def system(content: str) -> Message:
    """A system message: instructions for the model."""
    return Message(role=Role.SYSTEM, content=content)


def user(content: str) -> Message:
    """A user message."""
    return Message(role=Role.USER, content=content)


def assistant(content: str) -> Message:
    """An assistant message: an earlier answer, for multi-turn prompts."""
    return Message(role=Role.ASSISTANT, content=content)


def request(
    prompt: Prompt,
    *,
    system: Optional[str] = None,
    model: Optional[str] = None,
    max_tokens: Optional[int] = None,
    temperature: Optional[float] = None,
    json: bool = False,
    stream: Optional[str] = None,
) -> Request:
    """Builds one request.

    `prompt` is the user message, or a list of messages (`llm.user(...)`,
    `llm.assistant(...)`) for a conversation; the model answers the last one. `system`
    goes first. `model` is an alias from the operator's `[models]` table (None means
    `default`; an unknown alias fails with kind `rejected`). `max_tokens` and
    `temperature` default to the provider's. `json=True` asks for a JSON object (the
    provider's JSON mode where it has one): say in the prompt which keys you expect, and
    parse with `parse_json`. `stream` is a label: the output's tokens then stream to the
    job's clients as `token` events `{label, delta}` while they arrive (you still get the
    whole text back).
    """
    messages = [user(prompt)] if isinstance(prompt, str) else list(prompt)
    if system is not None:
        messages.insert(0, Message(role=Role.SYSTEM, content=system))
    if not messages:
        raise ValueError("an LLM request needs at least one message")
    if max_tokens is not None and not 0 <= max_tokens <= _U32_MAX:
        raise ValueError(f"max_tokens must be between 0 and {_U32_MAX}, got {max_tokens}")
    return Request(
        messages=messages,
        model=model,
        max_tokens=max_tokens,
        temperature=None if temperature is None else float(temperature),
        json_output=json,
        stream_label=stream,
    )


def complete(prompt: Union[Prompt, Request], **options: Any) -> Response:
    """Runs one completion and returns its `Response` (`.text`, `.model`,
    `.input_tokens`, `.output_tokens`). Takes a `Request`, or the arguments of `request`.
    Blocks this plugin (not the host) until the answer is complete. Raises `LlmError`."""
    if isinstance(prompt, Request):
        if options:
            raise TypeError("pass options to llm.request(), not with a built Request")
        req = prompt
    else:
        req = request(prompt, **options)
    try:
        return _host.current().complete(req)
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
    outcomes = []
    for outcome in _host.current().complete_all(list(requests)):
        if isinstance(outcome, Err):
            outcomes.append(LlmError.from_wit(outcome.value))
        else:
            outcomes.append(outcome.value)
    if return_errors:
        return outcomes
    errors = [o for o in outcomes if isinstance(o, LlmError)]
    if errors:
        raise next((e for e in errors if not e.transient), errors[0])
    return outcomes


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
