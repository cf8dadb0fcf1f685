"""Unit tests: `python3 -m unittest`, natively, on the SDK's fake host."""

import unittest

import app
from kiln_plugin import InvalidInput
from kiln_plugin.testing import FakeHost


class AppTest(unittest.TestCase):
    def test_writes_about_the_topic(self):
        host = FakeHost(llm=["  Lighthouses keep watch.  "])
        result = host.run({"topic": "lighthouses"})

        self.assertEqual(result, {"topic": "lighthouses", "text": "Lighthouses keep watch."})
        self.assertIn("lighthouses", host.requests[0].messages[-1].content)
        self.assertEqual(host.tokens, {"text": "  Lighthouses keep watch.  "})
        self.assertEqual(host.partial_data("text"), {"text": "Lighthouses keep watch."})
        self.assertEqual(host.progress, [(10, "Writing"), (100, "Written")])

    def test_a_blank_topic_is_refused(self):
        with self.assertRaises(InvalidInput):
            FakeHost().run({"topic": "   "})


if __name__ == "__main__":
    unittest.main()
