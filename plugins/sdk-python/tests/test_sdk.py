"""Unit tests of the Python SDK, run natively on the fake host. From plugins/sdk-python:

    componentize-py -d ../../wit/v0.1.0 -w job-plugin bindings build/bindings  # once
    python3 -m unittest discover -s tests
"""

import unittest
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional

import kiln_plugin as kiln
from kiln_plugin import Description, Length, Pattern, Range, llm
from kiln_plugin._schema import parse_payload
from kiln_plugin.testing import FakeHost


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
                   request.json_output, request.stream_label)
        self.assertEqual(options, ("fast", 9, 1.0, True, "label"))
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


if __name__ == "__main__":
    unittest.main()
