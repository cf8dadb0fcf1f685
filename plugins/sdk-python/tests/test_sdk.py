"""Unit tests of the Python SDK, run natively on the fake host. From plugins/sdk-python:

    componentize-py -d ../../wit/v0.2.0 -w job-plugin bindings build/bindings  # once
    python3 -m unittest discover -s tests
"""

import csv
import io
import json
import math
import unittest
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional

import kiln_plugin as kiln
from kiln_plugin import Description, Length, Pattern, Range, artifacts, files, llm
from kiln_plugin._schema import parse_payload
from kiln_plugin.testing import FakeHost, Response, ToolCall


@dataclass
class Place:
    """Where it happens."""

    city: str
    population: Annotated[Optional[int], Range(min=0)] = None


@dataclass
class Payload:
    theme: Annotated[str, Length(1, 50), Pattern(r"\S"), Description("The theme.")]
    count: Annotated[int, Range(1, 10)] = 3
    ratio: float = 0.5
    loud: bool = False
    tone: Literal["dark", "light"] = "dark"
    tags: Annotated[list[Annotated[str, Length(max=5)]], Length(max=2)] = field(
        default_factory=list
    )
    place: Optional[Place] = None
    extra: Any = None


def declare(function, payload=Payload, **options):
    declaration = kiln.job_type("t", description="d", payload=payload, version="1.2.3", **options)
    return declaration(function)


ECHO = declare(lambda job: job.payload)


class SchemaTest(unittest.TestCase):
    def test_schema_is_derived_from_the_dataclass(self):
        schema = ECHO.schema
        self.assertEqual(schema["$schema"], "https://json-schema.org/draft/2020-12/schema")
        self.assertEqual((schema["title"], schema["type"]), ("t payload", "object"))
        self.assertEqual(schema["required"], ["theme"])
        self.assertIs(schema["additionalProperties"], False)
        p = schema["properties"]
        self.assertEqual(p["theme"], {"description": "The theme.", "type": "string",
                                      "minLength": 1, "maxLength": 50, "pattern": "\\S"})
        self.assertEqual(p["count"], {"type": "integer", "minimum": 1, "maximum": 10, "default": 3})
        self.assertEqual(p["ratio"], {"type": "number", "default": 0.5})
        self.assertEqual(p["loud"], {"type": "boolean", "default": False})
        self.assertEqual(p["tone"],
                         {"type": "string", "enum": ["dark", "light"], "default": "dark"})
        self.assertEqual(p["tags"], {"type": "array", "items": {"type": "string", "maxLength": 5},
                                     "maxItems": 2, "default": []})
        self.assertEqual(p["place"]["type"], ["object", "null"])
        self.assertEqual(p["place"]["description"], "Where it happens.")
        self.assertEqual(p["place"]["properties"]["population"],
                         {"type": ["integer", "null"], "minimum": 0, "default": None})
        self.assertEqual(p["extra"], {"default": None})

    def test_unsupported_declarations_fail_at_once(self):
        @dataclass
        class Bad:
            when: set

        @dataclass
        class Misplaced:
            n: Annotated[int, Length(1, 2)]

        for payload in (Bad, Misplaced, dict):
            with self.subTest(payload=payload), self.assertRaises(TypeError):
                declare(lambda job: None, payload=payload)
        with self.assertRaises(ValueError):
            kiln.job_type("Bad Name", description="d", payload=Payload, version="1")

    def test_version_defaults_to_the_pyproject_beside_the_module(self):
        # This test module has no pyproject.toml beside it.
        with self.assertRaisesRegex(ValueError, "pyproject.toml"):
            kiln.job_type("t", description="d", payload=Payload)(lambda job: None)


class ParseTest(unittest.TestCase):
    def parse(self, value):
        import json
        return parse_payload(Payload, json.dumps(value))

    def test_parses_into_dataclasses_with_defaults(self):
        payload = self.parse({"theme": "x", "count": 2.0, "ratio": 1,
                              "place": {"city": "Oslo"}, "extra": [1]})
        self.assertEqual(
            payload, Payload(theme="x", count=2, ratio=1.0, place=Place("Oslo"), extra=[1])
        )
        self.assertIsInstance(payload.count, int)

    def test_refuses_what_the_schema_refuses_naming_the_field(self):
        cases = {
            "payload: missing required field 'theme'": {},
            "payload: unknown field 'colour'": {"theme": "x", "colour": 1},
            "payload.theme: must match the pattern": {"theme": "  "},
            "payload.theme: must have at most 50 characters": {"theme": "x" * 51},
            "payload.count: must be at most 10, got 11": {"theme": "x", "count": 11},
            "payload.count: expected an integer, got a boolean": {"theme": "x", "count": True},
            "payload.count: expected an integer, got a number": {"theme": "x", "count": 1.5},
            'payload.tone: must be one of "dark", "light"': {"theme": "x", "tone": "grey"},
            "payload.tags[1]: must have at most 5 characters":
                {"theme": "x", "tags": ["a", "toolong"]},
            "payload.tags: must have at most 2 items": {"theme": "x", "tags": ["a", "b", "c"]},
            "payload.place.population: must be at least 0":
                {"theme": "x", "place": {"city": "a", "population": -1}},
        }
        for expected, value in cases.items():
            with self.subTest(expected=expected), self.assertRaises(kiln.InvalidInput) as caught:
                self.parse(value)
            self.assertTrue(caught.exception.message.startswith(expected), caught.exception.message)

    def test_not_json_is_invalid_input(self):
        with self.assertRaisesRegex(kiln.InvalidInput, "not JSON"):
            FakeHost().run("{nope", job_type=ECHO)


class RunTest(unittest.TestCase):
    def test_result_and_info(self):
        self.assertEqual(FakeHost().run({"theme": "x"}, job_type=ECHO)["count"], 3)
        info = declare(lambda job: None, timeout_secs=60).info()
        self.assertEqual((info.name, info.version, info.description, info.default_timeout_secs),
                         ("t", "1.2.3", "d", 60))
        self.assertIn('"additionalProperties":false', info.payload_schema)

    def test_uncaught_exception_is_permanent_with_traceback_and_logged(self):
        def run(job):
            return {"n": 1 // 0}

        host = FakeHost()
        with self.assertRaises(kiln.Permanent) as caught:
            host.run({"theme": "x"}, job_type=declare(run))
        message = caught.exception.message
        first, _, rest = message.partition("\n\n")
        self.assertRegex(first, r"^ZeroDivisionError: integer division or modulo by zero "
                                r"\(at .*test_sdk.py:\d+, in run\)$")
        self.assertTrue(rest.startswith("Traceback (most recent call last):"), rest)
        self.assertNotIn("_job.py", rest)  # the SDK's own frame is dropped
        self.assertEqual((host.logs[-1].level, host.logs[-1].message), ("error", message))

    def test_job_errors_keep_their_kind(self):
        for error in (kiln.InvalidInput("a"), kiln.Retryable("b"), kiln.Permanent("c")):
            def run(job, error=error):
                raise error
            with self.subTest(error=error), self.assertRaises(type(error)) as caught:
                FakeHost().run({"theme": "x"}, job_type=declare(run))
            self.assertEqual(caught.exception.message, error.message)

    def test_uncaught_llm_errors_are_retryable_when_transient(self):
        def fail(kind):
            def answer(request):
                raise kiln.LlmError(kind, "why")
            return answer

        job = declare(lambda job: llm.complete("hi").text)
        for kind, expected in (("rate_limited", kiln.Retryable), ("timeout", kiln.Retryable),
                               ("unavailable", kiln.Retryable), ("rejected", kiln.Permanent)):
            with self.subTest(kind=kind), self.assertRaises(expected) as caught:
                FakeHost(llm=fail(kind)).run({"theme": "x"}, job_type=job)
            self.assertTrue(caught.exception.message.startswith("LLM call "))

    def test_result_must_be_json(self):
        with self.assertRaisesRegex(kiln.Permanent, "not JSON-serialisable"):
            FakeHost().run({"theme": "x"}, job_type=declare(lambda job: {1, 2}))
        with self.assertRaisesRegex(kiln.Permanent, "not JSON-serialisable"):
            FakeHost().run({"theme": "x"}, job_type=declare(lambda job: float("nan")))


class EventsTest(unittest.TestCase):
    def test_progress_is_clamped_and_never_goes_down(self):
        def run(job):
            for percent in (-5, 40, 20, 250):
                kiln.progress(percent, f"at {percent}")
            tracker = kiln.Progress(items=3, steps=6)
            tracker.step_done("Generated names")
            return tracker.percent

        host = FakeHost()
        self.assertEqual(host.run({"theme": "x"}, job_type=declare(run)), 16)
        self.assertEqual([p for p, _ in host.progress], [0, 40, 40, 100, 100])
        self.assertEqual(host.progress[-1][1], "Generated names (3/3)")

    def test_partials_accept_dataclasses_and_refuse_the_rest(self):
        def run(job):
            kiln.partial("place", Place("Oslo", 700000))
            kiln.partial("bad", object())

        host = FakeHost()
        with self.assertRaisesRegex(kiln.Permanent, "TypeError: partial 'bad'"):
            host.run({"theme": "x"}, job_type=declare(run))
        self.assertEqual(host.partial_data("place"), {"city": "Oslo", "population": 700000})

    def test_log_levels(self):
        def run(job):
            kiln.log.info("one")
            kiln.log.warning("two")

        host = FakeHost()
        host.run({"theme": "x"}, job_type=declare(run))
        self.assertEqual([(line.level, line.message) for line in host.logs],
                         [("info", "one"), ("warn", "two")])


class LlmTest(unittest.TestCase):
    def test_request_options(self):
        request = llm.request("u", system="s", model="fast", max_tokens=9, temperature=1,
                              json=True, stream="label")
        self.assertEqual([(m.role, m.content) for m in request.messages],
                         [(llm.Role.SYSTEM, "s"), (llm.Role.USER, "u")])
        options = (request.model, request.max_tokens, request.temperature,
                   llm.is_json(request), request.stream_label)
        self.assertEqual(options, ("fast", 9, 1.0, True, "label"))
        self.assertEqual((llm.output_schema(request), request.tools), (None, []))
        self.assertFalse(llm.is_json(llm.request("u")))
        conversation = llm.request([llm.user("a"), llm.assistant("b"), llm.user("c")])
        self.assertEqual([m.role for m in conversation.messages],
                         [llm.Role.USER, llm.Role.ASSISTANT, llm.Role.USER])
        with self.assertRaises(ValueError):
            llm.request("u", max_tokens=-1)

    def test_complete_all_raises_the_most_serious_error(self):
        def answer(request):
            text = request.messages[-1].content
            if text != "ok":
                raise kiln.LlmError(text, "no")
            return "fine"

        def run(job):
            requests = [llm.request(t) for t in ("ok", "timeout", "rejected")]
            outcomes = llm.complete_all(requests, return_errors=True)
            assert [type(o).__name__ for o in outcomes] == ["Response", "LlmError", "LlmError"]
            llm.complete_all(requests)

        with self.assertRaisesRegex(kiln.Permanent, "rejected"):
            FakeHost(llm=answer).run({"theme": "x"}, job_type=declare(run))

    def test_canned_answers_run_out_loudly(self):
        job = declare(lambda job: [llm.complete("a").text, llm.complete("b").text])
        with self.assertRaisesRegex(kiln.Permanent, "ran out of canned LLM answers"):
            FakeHost(llm=["one"]).run({"theme": "x"}, job_type=job)

    def test_parse_json_forgives_fences_and_prose(self):
        self.assertEqual(llm.parse_json('{"a": 1}'), {"a": 1})
        self.assertEqual(llm.parse_json('```json\n{"a": [1]}\n```'), {"a": [1]})
        self.assertEqual(llm.parse_json('Sure! Here it is: [1, 2]. Enjoy.'), [1, 2])
        with self.assertRaises(ValueError):
            llm.parse_json("no json here")
        self.assertEqual(llm.json_or_text("  plain  "), "plain")


ADD = llm.tool("add", "Adds two integers.", {
    "type": "object",
    "required": ["a", "b"],
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
})


def add_loop(job):
    """A tool loop: runs `add` until the model answers in text (at most 4 rounds)."""
    request = llm.request("What is 2 + 3?", tools=[ADD])
    ran = []
    for _ in range(4):
        answer = llm.complete(request)
        if not answer.tool_calls:
            return {"text": answer.text, "ran": ran, "finish": answer.finish_reason.name}
        request = llm.with_tool_calls(request, answer)
        for call in answer.tool_calls:
            args = call.args()
            ran.append(args["a"] + args["b"])
            request = llm.with_tool_result(request, call, {"sum": args["a"] + args["b"]})
    raise kiln.Permanent("still calling tools")


class StructuredOutputAndToolsTest(unittest.TestCase):
    def test_schema_and_tools_go_into_the_request(self):
        schema = {"type": "object", "required": ["title"]}
        request = llm.request("Review it.", json=False, schema=schema, schema_name="review",
                              tools=[ADD])
        self.assertTrue(llm.is_json(request))
        self.assertEqual(llm.output_schema(request), schema)
        self.assertEqual(request.output.value.name, "review")
        self.assertEqual(llm.tool_names(request), ["add"])
        self.assertEqual(json.loads(request.tools[0].parameters)["required"], ["a", "b"])
        self.assertEqual(request.tools[0].description, "Adds two integers.")
        with self.assertRaises(ValueError):
            llm.tool("no spaces", "d", {"type": "object"})
        with self.assertRaises(TypeError):
            llm.tool("t", "d", '{"type": "object"}')
        with self.assertRaises(TypeError):
            llm.request("u", schema='{"type": "object"}')
        with self.assertRaises(TypeError):
            llm.request("u", tools=[{"name": "add"}])

    def test_a_tool_loop_appends_calls_and_results(self):
        def answer(request):
            if request.messages[-1].role == llm.Role.TOOL:
                return "5"
            return Response.calls([ToolCall("c1", "add", {"a": 2, "b": 3})])

        host = FakeHost(llm=answer)
        result = host.run({"theme": "x"}, job_type=declare(add_loop))
        self.assertEqual(result, {"text": "5", "ran": [5], "finish": "STOP"})
        last = host.requests[-1].messages
        self.assertEqual([m.role for m in last],
                         [llm.Role.USER, llm.Role.ASSISTANT, llm.Role.TOOL])
        self.assertEqual([(c.id, c.name, json.loads(c.arguments)) for c in last[1].tool_calls],
                         [("c1", "add", {"a": 2, "b": 3})])
        self.assertEqual((last[2].tool_call_id, last[2].content), ("c1", '{"sum":5}'))
        self.assertEqual(host.requests[0].messages[-1].role, llm.Role.USER)  # not mutated

    def test_canned_answers_may_call_tools(self):
        calls = Response.calls([ToolCall("c1", "add", '{"a": 1, "b": 1}'),
                                ToolCall("c2", "add", {"a": 2, "b": 2})])
        host = FakeHost(llm=[calls, "done"])
        self.assertEqual(host.run({"theme": "x"}, job_type=declare(add_loop))["ran"], [2, 4])
        self.assertEqual([m.tool_call_id for m in host.requests[1].messages[-2:]], ["c1", "c2"])

    def test_the_fake_refuses_a_call_of_a_tool_not_offered(self):
        host = FakeHost(llm=[Response.calls([ToolCall("c1", "delete", {})])])
        with self.assertRaisesRegex(kiln.Permanent, "does not offer"):
            host.run({"theme": "x"}, job_type=declare(add_loop))

    def test_message_builders(self):
        answer = Response("thinking", tool_calls=[ToolCall("c9", "add", {"a": 1})])
        message = llm.assistant(answer)
        self.assertEqual((message.role, message.content, message.tool_calls[0].id),
                         (llm.Role.ASSISTANT, "thinking", "c9"))
        self.assertEqual(llm.assistant("plain").tool_calls, [])
        result = llm.tool_result("c9", "just text")
        self.assertEqual((result.role, result.content, result.tool_call_id),
                         (llm.Role.TOOL, "just text", "c9"))
        self.assertIsNone(llm.user("u").tool_call_id)
        with self.assertRaisesRegex(ValueError, "not JSON"):
            ToolCall("c", "add", "{oops").args()

    def test_usage_and_finish_reason_reach_the_job(self):
        def run(job):
            answer = llm.complete("hi", schema={"type": "object"})
            return {"answer": answer.json(), "usage": [answer.input_tokens, answer.output_tokens,
                    answer.cached_input_tokens, answer.reasoning_tokens],
                    "finish": answer.finish_reason.name, "model": answer.model}

        answer = Response('{"a": 1}', model="m", input_tokens=7, output_tokens=3,
                          cached_input_tokens=5, reasoning_tokens=2,
                          finish_reason=llm.FinishReason.LENGTH)
        result = FakeHost(llm=[answer]).run({"theme": "x"}, job_type=declare(run))
        self.assertEqual(result, {"answer": {"a": 1}, "usage": [7, 3, 5, 2],
                                  "finish": "LENGTH", "model": "m"})
        # Without counts, the fake fills in the input tokens; JSON requests default to {}.
        result = FakeHost().run({"theme": "x"}, job_type=declare(run))
        self.assertEqual((result["answer"], result["usage"][0]), ({}, 1))

    def test_a_wit_response_round_trips(self):
        answer = Response.calls([ToolCall("c1", "add", {})], text="t", cached_input_tokens=4)
        self.assertEqual(Response.from_wit(answer.to_wit()), answer)


class EmbedTest(unittest.TestCase):
    def test_embeddings_are_recorded_and_deterministic(self):
        def run(job):
            first = llm.embed(["a lighthouse", "a ship"])
            again = llm.embed(["a lighthouse"], model="small")
            none = llm.embed([])
            return {"same": first.vectors[0] == again.vectors[0],
                    "norms": [round(math.hypot(*v), 6) for v in first.vectors],
                    "model": first.model, "tokens": first.input_tokens, "empty": none.vectors}

        host = FakeHost()
        result = host.run({"theme": "x"}, job_type=declare(run))
        self.assertEqual(result, {"same": True, "norms": [1.0, 1.0], "model": "fake",
                                  "tokens": 4, "empty": []})
        self.assertEqual(host.embedded, [["a lighthouse", "a ship"], ["a lighthouse"]])

    def test_a_custom_embedder_and_its_errors(self):
        def embedder(texts, model):
            if model == "down":
                raise kiln.LlmError("unavailable", "no embeddings today")
            return [[float(len(t))] for t in texts]

        job = declare(lambda job: llm.embed(["abc"], model=job.payload.theme).vectors)
        self.assertEqual(FakeHost(embedder=embedder).run({"theme": "up"}, job_type=job), [[3.0]])
        with self.assertRaisesRegex(kiln.Retryable, "no embeddings today"):
            FakeHost(embedder=embedder).run({"theme": "down"}, job_type=job)
        with self.assertRaisesRegex(kiln.Permanent, "list of texts"):
            FakeHost().run({"theme": "x"}, job_type=declare(lambda job: llm.embed("one")))


@dataclass
class FilePayload:
    document: kiln.FileId
    limit: int = 1 << 30


class FilesTest(unittest.TestCase):
    BIG = bytes(range(256)) * 5000  # 1.22 MiB: two host reads

    def run_files(self, function, document="f1", **files_):
        host = FakeHost(files=files_ or {"f1": ("text/csv", self.BIG)})
        job = declare(function, payload=FilePayload)
        return host.run({"document": document}, job_type=job)

    def test_a_file_id_field_is_a_kiln_file_in_the_schema(self):
        schema = declare(lambda job: None, payload=FilePayload).schema
        self.assertEqual(schema["properties"]["document"],
                         {"type": "string", "format": "kiln-file"})

        @dataclass
        class Described:
            upload: Annotated[kiln.FileId, Description("The upload.")]

        schema = declare(lambda job: None, payload=Described).schema
        self.assertEqual(schema["properties"]["upload"],
                         {"description": "The upload.", "type": "string", "format": "kiln-file"})

    def test_stat_chunks_and_read_all(self):
        def run(job):
            doc = job.payload.document
            info = files.stat(doc)
            sizes = [len(c) for c in files.chunks(doc)]
            whole = files.read_all(doc, 2 << 20)
            return {"info": [info.id, info.size, info.content_type, len(info.sha256)],
                    "sizes": sizes, "same": whole == self.BIG,
                    "middle": list(files.read(doc, 255, 3)), "past": list(files.read(doc, 10**9))}

        result = self.run_files(run)
        self.assertEqual(result["info"], ["f1", len(self.BIG), "text/csv", 64])
        self.assertEqual(result["sizes"], [files.CHUNK, len(self.BIG) - files.CHUNK])
        self.assertEqual((result["same"], result["middle"], result["past"]),
                         (True, [255, 0, 1], []))

    def test_a_reader_is_a_binary_file(self):
        def run(job):
            reader = files.Reader(job.payload.document)
            text = io.TextIOWrapper(io.BufferedReader(reader), encoding="utf-8")
            return [row for row in csv.reader(text)]

        rows = self.run_files(run, f1=("text/csv", "a,b\n1,2\n"))
        self.assertEqual(rows, [["a", "b"], ["1", "2"]])

        def exact(job):
            reader = files.Reader(job.payload.document)
            return [reader.read(2).decode(), reader.next_chunk().decode(), reader.read().decode()]

        self.assertEqual(self.run_files(exact, f1="hello"), ["he", "llo", ""])

    def test_missing_and_oversized_files_are_invalid_input(self):
        with self.assertRaisesRegex(kiln.InvalidInput, "file not found: no file 'nope'"):
            self.run_files(lambda job: files.stat(job.payload.document), document="nope")
        with self.assertRaisesRegex(kiln.InvalidInput, "file too large: 'f1' is 5 bytes"):
            self.run_files(lambda job: files.read_all(job.payload.document, 4), f1=b"12345")

        def caught(job):
            try:
                files.read_all(job.payload.document, 0)
            except kiln.FileError as error:
                return [error.kind, error.transient]

        self.assertEqual(self.run_files(caught, f1=b"x"), ["too_large", False])
        self.assertIsInstance(kiln.FileError("unavailable", "disk").to_job_error(), kiln.Retryable)


class ArtifactsTest(unittest.TestCase):
    def test_writes_append_and_are_recorded(self):
        def run(job):
            artifacts.write("summary.md", "text/markdown", "# Title\n")
            artifacts.write("summary.md", "text/markdown", b"Body\n")
            artifacts.write("big.bin", "application/octet-stream", b"k" * (artifacts.CHUNK + 5))
            with artifacts.Writer("rows.csv", "text/csv") as out:
                csv.writer(out, lineterminator="\n").writerows([["a", "b"], [1, 2]])
            artifacts.Writer("empty.txt", "text/plain")

        host = FakeHost()
        host.run({"theme": "x"}, job_type=declare(run))
        self.assertEqual(list(host.artifacts), ["summary.md", "big.bin", "rows.csv", "empty.txt"])
        self.assertEqual(host.artifacts["summary.md"].text, "# Title\nBody\n")
        self.assertEqual(host.artifacts["summary.md"].content_type, "text/markdown")
        self.assertEqual(len(host.artifacts["big.bin"].data), artifacts.CHUNK + 5)
        self.assertEqual(host.artifacts["rows.csv"].text, "a,b\n1,2\n")
        self.assertEqual(host.artifacts["empty.txt"].data, b"")

    def test_refused_writes_are_permanent(self):
        def retype(job):
            artifacts.write("a.txt", "text/plain", "x")
            artifacts.write("a.txt", "text/html", "y")

        with self.assertRaisesRegex(kiln.Permanent, "created as text/plain, not text/html"):
            FakeHost().run({"theme": "x"}, job_type=declare(retype))
        for name in (".hidden", "a/b", "", "x" * 129):
            with self.subTest(name=name), self.assertRaisesRegex(kiln.Permanent, "not allowed"):
                FakeHost().run({"theme": "x"},
                               job_type=declare(lambda job, n=name: artifacts.write(n, "t", "")))


if __name__ == "__main__":
    unittest.main()
