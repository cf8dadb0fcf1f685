"""Unit tests of the `settings` job type, run natively on the SDK's fake host:
`python3 -m unittest` from this folder (after one `kiln plugin build`)."""

import unittest

import app
from kiln_plugin import InvalidInput, LlmError, Retryable
from kiln_plugin.testing import FakeHost

FIELDS = ["name", "landscape", "culture", "history", "economy", "summary"]


def echo(request):
    """Answers with the step's field and the setting number, read back from the prompt's
    stream label `setting-{i}/{field}`, so each answer says which request it answered."""
    setting, field = request.stream_label.split("/")
    return f" {field} of {setting} "


class SettingsTest(unittest.TestCase):
    def test_settings_advance_together_and_stream_each_step(self):
        host = FakeHost(llm=echo)
        result = host.run({"theme": "sunken archipelago", "count": 2})

        self.assertEqual([list(s) for s in result], [FIELDS, FIELDS])
        self.assertEqual(result[1]["economy"], "economy of setting-2")  # trimmed
        self.assertEqual(len(host.requests), 12)
        self.assertEqual(
            [r.stream_label for r in host.requests[:4]],
            ["setting-1/name", "setting-2/name", "setting-1/landscape", "setting-2/landscape"],
        )
        # Later steps see the theme and the setting's earlier fields.
        prompt = host.requests[-1].messages[-1].content
        self.assertIn("Theme: sunken archipelago", prompt)
        self.assertIn("economy: economy of setting-2", prompt)
        self.assertEqual(host.requests[0].messages[0].role, app.llm.Role.SYSTEM)

    def test_progress_after_each_round_and_one_partial_per_setting(self):
        host = FakeHost(llm=echo)
        result = host.run({"theme": "desert trade cities"})  # count defaults to 3

        self.assertEqual(host.progress[0], (16, "Generated names (3/3)"))
        self.assertEqual(host.progress[1], (33, "Generated landscapes (3/3)"))
        self.assertEqual(host.progress[-1], (100, "Generated summaries (3/3)"))
        self.assertEqual(len(host.progress), 6)
        self.assertEqual([name for name, _ in host.partials],
                         ["setting-1", "setting-2", "setting-3"])
        self.assertEqual(host.partial_data("setting-3"), result[2])

    def test_payload_rules_match_the_schema(self):
        schema = app.run.schema
        self.assertEqual(schema["required"], ["theme"])
        self.assertFalse(schema["additionalProperties"])
        self.assertEqual(
            schema["properties"]["theme"],
            {
                "description": schema["properties"]["theme"]["description"],
                "type": "string", "minLength": 1, "maxLength": 500, "pattern": "\\S",
            },
        )
        count = schema["properties"]["count"]
        self.assertEqual((count["type"], count["minimum"], count["maximum"], count["default"]),
                         ("integer", 1, 10, 3))
        refused = ({"theme": "   "}, {"theme": "x", "count": 11}, {"theme": "x", "extra": 1}, {})
        for payload in refused:
            with self.subTest(payload=payload), self.assertRaises(InvalidInput):
                FakeHost().run(payload)

    def test_a_transient_llm_error_makes_the_job_retryable(self):
        def rate_limited(request):
            raise LlmError("rate_limited", "slow down")

        with self.assertRaises(Retryable) as caught:
            FakeHost(llm=rate_limited).run({"theme": "x", "count": 1})
        self.assertIn("slow down", caught.exception.message)

    def test_a_cancelled_job_stops_before_calling_the_model(self):
        host = FakeHost(cancel_requested=True)
        with self.assertRaises(Exception) as caught:
            host.run({"theme": "x"})
        self.assertEqual(caught.exception.kind, "permanent")
        self.assertEqual(host.requests, [])


if __name__ == "__main__":
    unittest.main()
