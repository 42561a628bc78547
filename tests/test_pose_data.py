"""The pose example's synthetic figures, heatmap decoding and PCKh (examples/pose)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

POSE = Path(__file__).resolve().parents[1] / "examples" / "pose"


def load(name: str):
    """The example's module `name`, imported under a name of its own (pose_<name>)."""
    spec = importlib.util.spec_from_file_location(f"pose_{name}", POSE / f"{name}.py")
    module = sys.modules[f"pose_{name}"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


data = load("data")
metrics = load("metrics")


def test_figures_are_deterministic_and_keep_their_proportions() -> None:
    first = data.render(np.random.default_rng((3, 7)))
    again = data.render(np.random.default_rng((3, 7)))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    for index in range(20):
        image, points, visible, head = data.render(np.random.default_rng((1, index)))
        assert image.shape == (64, 64, 3) and image.min() >= 0 and image.max() <= 1
        # limb lengths relative to the head segment (1.5 H): upper arm, forearm, thigh, shin
        for (a, b), ratio in {(2, 4): 1.45, (4, 6): 1.25, (8, 10): 1.9, (10, 12): 1.8}.items():
            length = np.linalg.norm(points[a] - points[b]) / head
            assert length == pytest.approx(ratio / 1.5, rel=1e-4)
        inside = ((points >= 0) & (points <= 63)).all(1)
        assert np.array_equal(visible > 0, inside)


def test_some_joints_fall_outside_and_get_no_target() -> None:
    samples = [data.render(np.random.default_rng((2, i))) for i in range(60)]
    visible = np.stack([s[2] for s in samples])
    assert 0.75 < visible.mean() < 1.0  # some, not most, joints are outside the image
    _, points, vis, _ = next(s for s in samples if s[2].min() == 0)
    targets = data.heatmaps(points, vis)
    assert not targets[vis == 0].any() and np.allclose(targets[vis > 0].max((1, 2)), 1, atol=0.4)


def test_decoding_recovers_the_joints_and_pck_counts_visible_ones() -> None:
    rng = np.random.default_rng(0)
    points = rng.uniform(4, 59, (5, 14, 2)).astype(np.float32)
    visible = np.ones((5, 14), np.float32)
    maps = np.stack([data.heatmaps(p, v) for p, v in zip(points, visible)])
    decoded = metrics.decode(maps, data.STRIDE)
    # arg-max plus the quarter-pixel shift: within a quarter heatmap pixel per axis
    assert np.abs(decoded - points).max() <= 0.25 * data.STRIDE + 1e-6
    head = np.full(5, 10.0)
    assert metrics.pck(decoded, points, visible, head)[0] == 1.0
    far = points + np.array([5.1, 0.0])
    visible[:, 0] = 0  # an invisible joint counts neither way
    overall, per_joint = metrics.pck(far, points, visible, head)
    assert overall == 0.0 and per_joint.shape == (14,)
    near = points + np.array([4.9, 0.0])
    assert metrics.pck(near, points, visible, head)[1][1:].min() == 1.0
