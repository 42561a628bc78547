"""Suite-wide test settings.

Hypothesis draws new examples on every local run (the ``dev`` profile), which is how edge
cases get found; under CI (``CI`` set) it runs derandomized, so a CI verdict is reproducible
and a red run always points at a failure anyone can replay.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
