"""`{{name}}`: a Kiln job type. Edit PROMPT first, then the payload and `run`."""

from dataclasses import dataclass
from typing import Annotated

import kiln_plugin as kiln
from kiln_plugin import Description, Length, Pattern, Range, llm

# What the model is asked; {topic} and {sentences} come from the payload.
SYSTEM = "You are a vivid, concise writer."
PROMPT = "Write about {topic} in at most {sentences} sentences."


@dataclass
class Payload:
    """What clients post as `payload`; the JSON Schema the host enforces comes from it."""

    topic: Annotated[str, Length(1, 200), Pattern(r"\S"), Description("What to write about.")]
    sentences: Annotated[int, Range(1, 10), Description("How long the text may be.")] = 3


@kiln.job_type(
    "{{name}}",
    description="Writes a short text about a topic.",
    payload=Payload,
    timeout_secs=120,
)
def run(job: kiln.Job[Payload]) -> dict:
    topic = job.payload.topic
    kiln.progress(10, "Writing")
    answer = llm.complete(
        PROMPT.format(topic=topic, sentences=job.payload.sentences),
        system=SYSTEM,
        max_tokens=400,
        stream="text",  # clients see the tokens live as `token` events labelled "text"
    )
    text = answer.text.strip()
    kiln.partial("text", {"text": text})
    kiln.progress(100, "Written")
    return {"topic": topic, "text": text}
