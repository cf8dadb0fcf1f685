"""kiln_plugin: write a Kiln job type in Python.

A Kiln job type is a WebAssembly component built against the `kiln:plugin@0.2.0` contract
(`wit/plugin.wit`). This package hides the contract's plumbing: declare a payload
dataclass and one run function in `app.py`, then `kiln plugin build` turns the project
into `NAME.wasm` with componentize-py.

    from dataclasses import dataclass
    from typing import Annotated

    import kiln_plugin as kiln
    from kiln_plugin import Length, llm

    @dataclass
    class Payload:
        names: Annotated[list[Annotated[str, Length(1, 80)]], Length(1, 20)]

    @kiln.job_type("greet", description="Writes a short greeting for each name.",
                   payload=Payload, timeout_secs=120)
    def run(job: kiln.Job[Payload]) -> dict:
        requests = [llm.request(f"Greet {name}.", system="You write one warm sentence.",
                                stream=f"greeting-{i}")
                    for i, name in enumerate(job.payload.names, 1)]
        greetings = [answer.text for answer in llm.complete_all(requests)]
        kiln.progress(100, "Greeted everyone")
        return {"greetings": greetings}

What the host guarantees, and what it expects:

* `describe` runs once when the host loads the component; it only reads the declaration.
* Every attempt runs in a fresh instance: no state survives between jobs. Module-level
  code runs once, at build time (componentize-py snapshots the initialised interpreter),
  so import everything at the top of a module; there are no files to import from later.
* The payload has passed the JSON Schema derived from the payload dataclass before the job
  exists; it is parsed into that dataclass for you.
* WASI is linked with an empty context: no files, sockets, environment or arguments, and
  stdout/stderr go nowhere. Talk to the host through `progress`, `llm`, `files`,
  `artifacts` and `log`.
* Raise `InvalidInput`, `Retryable` or `Permanent` to fail on purpose. An uncaught
  `LlmError` or `FileError` is retried when transient (a missing file is
  `invalid_input`); any other uncaught exception fails the job as `permanent` with the
  traceback as its message (and in the log at error level).
* Each `progress` and `partial` call is an SSE event; the host fails a job that exceeds
  its event rate limit.

Modules: `llm` (completions with JSON Schema output and tools, embeddings), `files`
(the input files the payload names, as `FileId` fields), `artifacts` (output files stored
with the job), `log`. Unit tests run natively with `kiln_plugin.testing.FakeHost`.
"""

from . import artifacts, files, llm, log
from ._events import Progress, cancelled, partial, progress, stage_message, to_json
from ._job import Definition, Job, job_type
from ._schema import Description, FileId, Format, Length, Pattern, Range
from .errors import FileError, InvalidInput, JobError, LlmError, Permanent, Retryable

__all__ = [
    "Definition",
    "Description",
    "FileError",
    "FileId",
    "Format",
    "InvalidInput",
    "Job",
    "JobError",
    "Length",
    "LlmError",
    "Pattern",
    "Permanent",
    "Progress",
    "Range",
    "Retryable",
    "artifacts",
    "cancelled",
    "files",
    "job_type",
    "llm",
    "log",
    "partial",
    "progress",
    "stage_message",
    "to_json",
]
