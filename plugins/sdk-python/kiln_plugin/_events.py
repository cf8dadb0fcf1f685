"""Progress reports, partial results and cancellation.

Every `progress` and `partial` call becomes an event on the job's Server-Sent Events
stream, so report at the pace of real work (after an LLM round, after a chunk), not in a
tight loop: the host fails a job that exceeds its event rate limit (`event_limit`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from . import _host


def progress(percent: float, message: str) -> None:
    """Reports overall progress of this attempt, 0 to 100, with a short message naming the
    stage ("Generated backstories (3/3)"). Out-of-range values are clamped; progress never
    goes down within an attempt (the host raises a lower value to the last one)."""
    _host.current().report(max(0, min(100, int(percent))), message)


def partial(name: str, data: Any) -> None:
    """Emits one finished item as a `partial` event `{name, data}`, so clients can show it
    before the job ends. `name` labels the item ("character-2"); `data` is anything
    `to_json` accepts (dicts, lists, strings, numbers, dataclasses). Raises `TypeError`
    when it is not JSON-serialisable."""
    try:
        text = to_json(data)
    except (TypeError, ValueError) as error:
        raise TypeError(f"partial {name!r}: the data is not JSON-serialisable: {error}") from None
    _host.current().partial(name, text)


def cancelled() -> bool:
    """True once a client has asked to cancel this job. Check it between long steps and
    stop early: the host also stops a cancelled job on its own, so this is about stopping
    cleanly and not paying for more LLM calls."""
    return _host.current().cancelled()


def stage_message(stage: str, done: int, total: int) -> str:
    """`"{stage} ({done}/{total})"`, the stage messages of Kiln's bundled job types."""
    return f"{stage} ({done}/{total})"


class Progress:
    """Tracks progress over `items x steps` units of work and turns it into percent, for
    jobs shaped as "N items, each through S steps" (advance all items one step per round):

        tracker = Progress(items=3, steps=6)
        tracker.step_done("Generated names")  # reports 16, "Generated names (3/3)"

    `percent = done * 100 // total`, capped at 100; with nothing to do it is 100.
    """

    def __init__(self, items: int, steps: int = 1) -> None:
        self.items = items
        self.total = items * steps
        self.done = 0

    @property
    def percent(self) -> int:
        """The current percentage."""
        if self.total <= 0:
            return 100
        return min(100, self.done * 100 // self.total)

    def advance(self, units: int, message: str) -> None:
        """Records `units` more units done and reports the new percentage with `message`."""
        self.done += units
        progress(self.percent, message)

    def step_done(self, stage: str) -> None:
        """Records one step done for every item and reports `"{stage} (N/N)"`."""
        self.advance(self.items, stage_message(stage, self.items, self.items))


def to_json(value: Any) -> str:
    """`value` as compact JSON text, dataclasses as objects. NaN and infinity are refused
    (they are not JSON, and the host would reject the result)."""
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_encode
    )


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
