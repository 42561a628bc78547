"""Random graphs from a small grammar: whatever the fusion planner makes of them, the runtime
must agree with the reference interpreter."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from rt_builder import IRBuilder
from test_graphs import MARGIN, run_both

STEPS = (
    "block",
    "binary",
    "float_conv",
    "affine",
    "prelu",
    "rprelu",
    "relu",
    "add",
    "concat",
    "pool",
    "upsample",
    "dyprelu",
)


def grow(b: IRBuilder, draw, n_steps: int) -> list[str]:
    """Apply ``n_steps`` random ops, each to a random earlier value; values keep 4-8 channels
    and 2-8 pixels a side so shapes stay small. Returns every value made."""
    values = [b.input([draw(st.integers(1, 6)), 4, 4])]
    for _ in range(n_steps):
        # mostly extend the newest value (chains the planner can fuse), sometimes branch off
        x = values[-1] if draw(st.booleans()) else draw(st.sampled_from(values))
        c, h, w = b.shapes[x]
        step = draw(st.sampled_from(STEPS))
        if step == "block":  # Bi-Real/ReActNet block: the add and activation fuse into the conv
            y = b.affine(b.bconv2d(b.quantize(x), c, kernel=3, padding=1))
            y = getattr(b, draw(st.sampled_from(["rprelu", "prelu"])))(b.add(y, x))
        elif step == "binary":
            out = draw(st.integers(1, 8))
            y = b.bconv2d(
                b.quantize(x, signed=draw(st.booleans())),
                out,
                kernel=3,
                stride=draw(st.integers(1, 2)) if min(h, w) > 2 else 1,
                padding=1,
                pad_value=draw(st.sampled_from([0, 1, -1])),
            )
            if draw(st.booleans()):
                y = b.affine(y)
        elif step == "float_conv":
            y = b.conv2d(x, draw(st.integers(1, 8)), kernel=1, padding=0, bias=draw(st.booleans()))
        elif step in ("affine", "prelu", "rprelu", "dyprelu"):
            y = getattr(b, step)(x)
        elif step == "relu":
            y = b.unary("relu", x)
        elif step in ("add", "concat"):
            same = [v for v in values if b.shapes[v][1:] == (h, w)]
            other = draw(st.sampled_from(same))
            if step == "add":
                y = b.add(x, other) if b.shapes[other] == (c, h, w) else b.add(x, x)
            else:
                y = b.concat([x, other])
        elif step == "pool" and min(h, w) >= 2:
            y = b.pool("maxpool2d", x, kernel=2, stride=2, ceil_mode=True)
        elif step == "upsample" and max(h, w) <= 4:
            y = b.upsample(x, 2, 2)
        else:
            continue
        values.append(y)
    return values


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_graphs_match_the_reference(data):
    b = IRBuilder(seed=data.draw(st.integers(0, 1000)))
    values = grow(b, data.draw, data.draw(st.integers(1, 8)))
    b.output(values[-1])
    extra = data.draw(st.sampled_from(values[1:-1])) if len(values) > 2 else None
    if extra is not None:
        b.output(extra)  # an intermediate that is also an output must not be fused away
    got, expected, _ = run_both(b, batch=data.draw(st.integers(1, 2)), margin=MARGIN)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
