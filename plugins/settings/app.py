"""Job type `settings`: generates `count` settings (worlds, regions, cities) for a `theme`.

Result: a JSON array with one object per setting, holding exactly the text fields `name`,
`landscape`, `culture`, `history`, `economy` and `summary`.

Each setting is written in six LLM steps, in that order, each prompt carrying the theme and
the setting's earlier fields. All settings advance together: one `complete_all` per step
with one request per setting, so a job makes `6 x count` calls in 6 rounds. After each
round the job reports "Generated landscapes (3/3)"-style progress; when the last round is
done each setting is emitted as a partial `setting-{i}` (1-based). This is the Python
twin of the Rust `characters` job type, and follows its shape step for step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import kiln_plugin as kiln
from kiln_plugin import Description, Length, Pattern, Range, llm


@dataclass(frozen=True)
class Step:
    """One generation step: the field it fills, its progress stage, what to ask, and a
    token cap."""

    field: str
    stage: str
    ask: str
    max_tokens: int


STEPS = (
    Step("name", "Generated names", "the setting's name. Answer with the name only.", 24),
    Step(
        "landscape",
        "Generated landscapes",
        "the setting's landscape and climate, in two or three vivid sentences.",
        200,
    ),
    Step(
        "culture",
        "Generated cultures",
        "the culture of its people (customs, beliefs, daily life), in one short paragraph "
        "consistent with the above.",
        240,
    ),
    Step(
        "history",
        "Generated histories",
        "the setting's history, in one short paragraph consistent with the above.",
        320,
    ),
    Step(
        "economy",
        "Generated economies",
        "its economy (trade, resources, who holds the wealth), in two or three sentences.",
        200,
    ),
    Step(
        "summary",
        "Generated summaries",
        "a one-paragraph summary that a game master could read aloud to introduce the "
        "setting.",
        200,
    ),
)

SYSTEM = (
    "You create settings (worlds, regions, cities) for stories and games. Stay consistent "
    "with the theme and with the details already given. Reply with the requested content "
    "only."
)


@dataclass
class Payload:
    """A theme and how many settings to generate."""

    theme: Annotated[
        str,
        Length(1, 500),
        Pattern(r"\S"),
        Description('What the settings should fit, e.g. "sunken bronze-age archipelago".'),
    ]
    count: Annotated[int, Range(1, 10), Description("How many settings to generate.")] = 3


@kiln.job_type(
    "settings",
    description="Generates themed settings (name, landscape, culture, history, economy, "
    "summary), streaming each one as it is finished.",
    payload=Payload,
    timeout_secs=300,
)
def run(job: kiln.Job[Payload]) -> list[dict[str, str]]:
    theme, count = job.payload.theme, job.payload.count
    settings: list[dict[str, str]] = [{} for _ in range(count)]
    tracker = kiln.Progress(items=count, steps=len(STEPS))
    for s, step in enumerate(STEPS):
        if kiln.cancelled():
            raise kiln.Permanent("cancelled")
        requests = [
            request(theme, i, count, step, setting) for i, setting in enumerate(settings, 1)
        ]
        for setting, answer in zip(settings, llm.complete_all(requests)):
            setting[step.field] = answer.text.strip()
        if s + 1 == len(STEPS):
            for i, setting in enumerate(settings, 1):
                kiln.partial(f"setting-{i}", setting)
        tracker.step_done(step.stage)
    return settings


def request(theme: str, index: int, count: int, step: Step, setting: dict[str, str]) -> llm.Request:
    """The request for `step` of setting `index` (1-based) of `count`."""
    prompt = f"Theme: {theme}\n"
    if step.field == "name":
        prompt += (
            f"This is setting {index} of {count}; give it a name that no other setting of "
            "the set would share (vary origin, initials and length by number).\n"
        )
    prompt += "".join(f"{field}: {text}\n" for field, text in setting.items())
    prompt += f"\nWrite {step.ask}"
    return llm.request(
        prompt,
        system=SYSTEM,
        max_tokens=step.max_tokens,
        temperature=0.9,
        stream=f"setting-{index}/{step.field}",
    )
