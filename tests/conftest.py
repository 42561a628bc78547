"""Suite-wide test settings and fixtures.

Hypothesis draws new examples on every local run (the ``dev`` profile), which is how edge
cases get found; under CI (``CI`` set) it runs derandomized, so a CI verdict is reproducible
and a red run always points at a failure anyone can replay.

The shared helper modules live next to this file (``tests/model_state.py``); pytest puts this
folder on ``sys.path``, so any test imports them by name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run a module's tiny torch models on one thread: on a busy machine torch's thread pool
    makes an 8x8 convolution take tens of milliseconds instead of tens of microseconds.
    (torch is imported here, not at the top, so the runtime's tests do not load it.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the one-line summaries that tests record with
    ``record_property("terminal_summary", text)`` (the fuzz suite's case count and outcome
    histogram), passed or failed, also from pytest-xdist workers (the property travels with
    the test's report)."""
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == "terminal_summary"
    ]
    if lines:
        terminalreporter.section("test summaries")
        for line in lines:
            terminalreporter.write_line(str(line))
