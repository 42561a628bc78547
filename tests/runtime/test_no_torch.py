"""The runtime loads and predicts in a process where importing torch (or binarize) fails."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from rt_builder import IRBuilder

REPO = Path(__file__).resolve().parents[2]

BLOCKER = textwrap.dedent(
    """
    import sys

    class BlockTraining:
        # A meta-path finder that refuses torch and binarize, as on a deployment machine.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "binarize"):
                raise ImportError(f"{name} is blocked in this test process")
            return None

    sys.meta_path.insert(0, BlockTraining())
    """
)

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the import blocker did not work")
    import runtime
    model = runtime.load(sys.argv[1])
    y = model.predict(np.ones((2, 4, 5, 5), np.float32))
    assert y.shape == (2, 3) and y.dtype == np.float32, y.shape
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "binarize"))
    assert not loaded, loaded
    print("ok", float(y.sum()))
    """
)


def test_runtime_predicts_without_torch(tmp_path):
    b = IRBuilder(seed=0)
    h = b.bconv2d(b.quantize(b.input([4, 5, 5])), 8)
    h = b.unary("flatten", b.unary("global_avgpool", b.prelu(b.affine(h))))
    b.output(b.dense(h, 3))
    (tmp_path / "model.bnn").write_bytes(b.to_bytes())
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), str(REPO)])}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "model.bnn")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
