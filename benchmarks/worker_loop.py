"""The JSON-lines loop of the benchmark workers (peers_worker.py, ours_worker.py).

Standard library only: the peers' worker runs in a venv without this project's packages.
One request per line on stdin, one answer per line on a private copy of stdout; anything a
library prints (C or Python) goes to stderr, so it cannot corrupt the protocol.
``{"cmd": "quit"}`` ends the loop without an answer; an unknown command or a handler's
exception is answered ``{"error": text}``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def serve(handlers: dict[str, Handler], check: Callable[[], None] | None = None) -> None:
    """Answer each request with ``handlers[request["cmd"]](request)``; ``check`` (if given)
    runs before each request and its exception becomes the answer."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("cmd") == "quit":
            break
        try:
            if check is not None:
                check()
            handler = handlers.get(request.get("cmd"))
            if handler is None:
                answer = {"error": f"unknown command {request.get('cmd')!r}"}
            else:
                answer = handler(request)
        except Exception:
            answer = {"error": traceback.format_exc(limit=3).strip()}
        channel.write(json.dumps(answer) + "\n")
