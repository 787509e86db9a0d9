"""Record the CPU time of every notebook the book build executes, for scripts/check_budgets.py.

A chapter's wall time depends on what else the machine runs; the CPU time its kernel spends
does not (the kernel runs torch on one thread: OMP_NUM_THREADS=1 in .ci/run). myst-nb (cache
mode) executes a notebook in a kernel that is a child process of the build, and the kernel is
waited for when it shuts down, so the build's RUSAGE_CHILDREN grows by the kernel's CPU time,
its own children's included, while the notebook executes.

For each notebook executed (not those taken from the cache), the seconds go to
``<path-output>/_build/notebook_seconds.json``, keyed by the notebook's path relative to the
book's root without suffix (``chapters/03_residual_placement``):
``{"cpu_seconds": ..., "wall_seconds": ..., "date": ...}``; newer executions replace older ones.
Loaded by _config.yml (local_extensions).
"""

from __future__ import annotations

import datetime
import json
import resource
import time
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)
FILENAME = "notebook_seconds.json"


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def setup(app: Sphinx) -> dict:
    try:
        from myst_nb.core.execute import cache as myst_cache
        client, execute = myst_cache.NotebookClientCache, myst_cache.single_nb_execution
    except (ImportError, AttributeError) as err:   # myst-nb changed: constraints.txt pins the one this fits
        logger.warning(f"cpu_time: cannot time notebook executions with this myst-nb ({err}); "
                       f"scripts/check_budgets.py will find no times")
        return {"parallel_read_safe": True, "parallel_write_safe": True}

    timings = Path(app.outdir).parent / FILENAME
    root = Path(app.srcdir)
    executing: dict[str, Path] = {}

    def timed_execution(*args, **kwargs):
        cpu, wall = children_cpu_seconds(), time.perf_counter()
        result = execute(*args, **kwargs)
        cpu, wall = children_cpu_seconds() - cpu, time.perf_counter() - wall
        if executing.get("path") is not None and result.err is None:
            key = executing["path"].resolve().relative_to(root.resolve()).with_suffix("").as_posix()
            seen = json.loads(timings.read_text()) if timings.exists() else {}
            seen[key] = {"cpu_seconds": round(cpu, 2), "wall_seconds": round(wall, 2),
                         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            timings.parent.mkdir(parents=True, exist_ok=True)
            timings.write_text(json.dumps(seen, indent=1, sort_keys=True) + "\n")
        return result

    original_start = client.start_client

    def start_client(self):
        executing["path"] = Path(self.path) if self.path is not None else None
        try:
            return original_start(self)
        finally:
            executing.pop("path", None)

    myst_cache.single_nb_execution = timed_execution
    client.start_client = start_client
    return {"parallel_read_safe": True, "parallel_write_safe": True}
