"""The component's export: `kiln:plugin/job-type`, wired to the job type app.py declared.

`kiln plugin build` writes an entry module that imports `app` (which declares the job type)
and then this module; `componentize-py` looks for the class `JobType` in it. Both imports
run at build time (componentize-py snapshots the initialised interpreter), so a job type
that is missing or declared twice fails the build with this module's message.
"""

from __future__ import annotations

import linecache
import re
import sys

from ._bindings import Err, exports
from ._bindings import types as _types
from ._job import declared, run_attempt
from .errors import JobError

_DEFINITION = declared()


def _keep_sources() -> None:
    """Puts the source of the project's modules (app.py, the SDK) into `linecache`, so a
    traceback at run time, when the component has no files, still shows each line.

    Entries with no modification time are the ones `linecache.checkcache` leaves alone,
    as it does for sources that came from a module loader.
    """
    for module in list(sys.modules.values()):
        filename = getattr(module, "__file__", None) or ""
        # componentize-py mounts each `-p` folder as /0, /1, ...; the stdlib lives elsewhere.
        if re.match(r"/\d+/", filename) and filename.endswith(".py"):
            lines = linecache.getlines(filename)
            if lines:
                linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)


_keep_sources()


class JobType(exports.JobType):
    """`describe` and `run` as the host calls them, each in a fresh instance."""

    def describe(self) -> _types.PluginInfo:
        # Must not call any import: it only reads the declaration.
        return _DEFINITION.info()

    def run(self, job: _types.Job) -> str:
        try:
            return run_attempt(_DEFINITION, job)
        except JobError as error:
            raise Err(error.to_wit()) from None
