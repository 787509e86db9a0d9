"""Test-session setup shared by the unit tests and the notebook tests (nbval).

It lives at the repository root so that it also applies to ``chapters/``.
nbval's kernels inherit this process's environment, so the scale and the
plotting backend are set here, before any kernel starts.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter

import pytest

os.environ.setdefault("DROPLAB_SCALE", "smoke")
# One torch thread per process: on a busy 2-core machine torch's two OpenMP threads
# spin against other processes and ran chapters up to 5x slower (measured while writing them).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
# Notebooks run at test time write their run records to a scratch folder, so a
# test run never reuses (or leaves behind) records of an earlier run.
os.environ.setdefault("DROPLAB_RESULTS", tempfile.mkdtemp(prefix="droplab-results-"))

_notebooks: set[str] = set()
_cells_passed: Counter[str] = Counter()


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Unit tests run torch on one thread, whatever OMP_NUM_THREADS the caller set.

    The test machine's cores are shared: more threads only oversubscribe them. Only
    Python test functions request fixtures; nbval's notebook cells do not, so this is
    a no-op for chapters/ (their kernels get OMP_NUM_THREADS=1 from the environment
    above), and torch is imported here only once a unit test needs the fixture.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collectreport(report):
    if report.nodeid.endswith(".ipynb"):
        _notebooks.add(report.nodeid)


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed and ".ipynb::" in report.nodeid:
        _cells_passed[report.nodeid.split("::")[0]] += 1


def pytest_sessionfinish(session, exitstatus):
    """A notebook that executed no cell fails the run instead of passing silently."""
    if session.config.option.collectonly or session.config.option.keyword or exitstatus != 0:
        return
    idle = sorted(nb for nb in _notebooks if _cells_passed[nb] == 0)
    if idle:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter:
            reporter.write_line(f"FAILED: these notebooks executed no cell: {', '.join(idle)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
