"""SYNTHETIC human-pose data: rendered stick figures with known joints (no real photographs).

No human-pose dataset of useful size installs offline, so this example measures heatmap
regression, PCK and stacking on figures drawn here. Every image is a pure function of its
split and index (``numpy.random.default_rng((SPLIT_SEEDS[split], index))``), so the train,
validation and test splits are fixed and disjoint whatever their sizes.

A figure has the 14 joints of :data:`JOINTS`. Its skeleton is built in units of H, the head
height, with adult proportions (about 7.8 heads tall with straight legs): torso (neck to
pelvis) 2.6 H, head segment (top of head to neck) 1.5 H, shoulder half-width 0.95 H, hip
half-width 0.6 H, upper arm 1.45 H, forearm 1.25 H, thigh 1.9 H, shin 1.8 H. Angles, in
degrees from the parent segment (0 = pointing down the torso), are drawn within joint
limits: torso lean +-20, head +-30 from the torso's axis, shoulder abduction -20..170,
elbow flexion 0..145, hip abduction -15..60, knee flexion 0..120 (the flexions in either
direction, as the 2-D projection of a 3-D pose allows), body yaw +-60 (shoulders and hips
foreshortened by cos(yaw)). The whole figure is rotated by +-40 degrees, scaled to 40-64
pixels tall and placed with its centre anywhere in the middle half of the 64x64 image, so
some joints fall outside it: those are marked invisible (``visible = 0``), get an all-zero
target heatmap and are left out of PCK.

Rendering: a vertical colour gradient, 3-8 clutter shapes (rectangles, ellipses and thick
limb-like bars), then the figure's far arm and leg, torso, head, near leg and arm in that
depth order (so the near limbs occlude the far ones: occluded joints keep their labels), each
limb a capsule with cylinder shading, sqrt(1 - (d / r)^2) across it, and a soft edge;
Gaussian pixel noise last. Targets are Gaussian heatmaps of std 1 heatmap pixel at 1/4
resolution (16x16), centred at u = (x + 0.5) / 4 - 0.5 for an image coordinate x.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

JOINTS = (
    "head", "neck", "r_shoulder", "l_shoulder", "r_elbow", "l_elbow", "r_wrist", "l_wrist",
    "r_hip", "l_hip", "r_knee", "l_knee", "r_ankle", "l_ankle",
)  # fmt: skip
BONES = (
    (0, 1), (1, 2), (1, 3), (2, 4), (4, 6), (3, 5), (5, 7),
    (1, 8), (1, 9), (8, 10), (10, 12), (9, 11), (11, 13),
)  # fmt: skip
"""Pairs of joint indices drawn as the skeleton (plots)."""
SIZE = 64
STRIDE = 4
HEATMAP = SIZE // STRIDE
SIGMA = 1.0
SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}
VERSION = 1  # of the generator: bump when a change alters the images


def direction(angle: float) -> np.ndarray:
    """Unit vector (x, y) in image coordinates (y down) at `angle` radians from straight down."""
    return np.array([math.sin(angle), math.cos(angle)])


def skeleton(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """Joint positions [14, 2] in units of H around the pelvis, and the drawing parameters."""
    deg = math.radians
    lean = deg(rng.uniform(-20, 20))
    yaw = math.cos(deg(rng.uniform(-60, 60)))
    down, side = direction(lean), direction(lean + math.pi / 2)
    joints = np.zeros((14, 2))
    pelvis = np.zeros(2)
    neck = pelvis - 2.6 * down
    joints[1] = neck
    joints[0] = neck - 1.5 * direction(lean + deg(rng.uniform(-30, 30)))
    for sign, shoulder, hip in ((-1, 2, 8), (1, 3, 9)):  # the person's right is image left
        joints[shoulder] = neck + 0.2 * down + sign * 0.95 * yaw * side
        joints[hip] = pelvis + sign * 0.6 * yaw * side
        upper = lean + sign * deg(rng.uniform(-20, 170))
        joints[shoulder + 2] = joints[shoulder] + 1.45 * direction(upper)
        fore = upper + rng.choice((-1, 1)) * deg(rng.uniform(0, 145))
        joints[shoulder + 4] = joints[shoulder + 2] + 1.25 * direction(fore)
        thigh = lean + sign * deg(rng.uniform(-15, 60))
        joints[hip + 2] = joints[hip] + 1.9 * direction(thigh)
        shin = thigh + rng.choice((-1, 1)) * deg(rng.uniform(0, 120))
        joints[hip + 4] = joints[hip + 2] + 1.8 * direction(shin)
    return joints, {"near_left": float(rng.uniform() < 0.5)}


def capsule(
    canvas: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float, color: np.ndarray,
    light: float,
) -> None:
    """Paint a shaded capsule from `a` to `b` onto `canvas` [H, W, 3] in place (only the
    pixels of its bounding box are computed)."""
    low = np.floor(np.minimum(a, b) - radius - 1).clip(0, SIZE).astype(int)
    high = np.ceil(np.maximum(a, b) + radius + 2).clip(0, SIZE).astype(int)
    if (high <= low).any():
        return
    ys, xs = np.mgrid[low[1]:high[1], low[0]:high[0]].astype(np.float64)
    points = np.stack([xs, ys], axis=-1)
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    distance = np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)
    alpha = np.clip(radius - distance + 0.5, 0.0, 1.0)[..., None]
    across = np.sqrt(np.clip(1.0 - (distance / radius) ** 2, 0.0, 1.0))[..., None]
    shade = color * (0.45 + 0.55 * across) * (0.8 + 0.2 * light * (2 * t[..., None] - 1))
    window = canvas[low[1]:high[1], low[0]:high[0]]
    window[:] = window * (1 - alpha) + np.clip(shade, 0, 1) * alpha


def background(rng: np.random.Generator) -> np.ndarray:
    """A colour gradient with 3-8 clutter shapes (rectangles, ellipses, limb-like bars)."""
    top, bottom = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    ramp = np.linspace(0, 1, SIZE)[:, None, None]
    canvas = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (SIZE, SIZE, 3)).copy()
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    for _ in range(rng.integers(3, 9)):
        color = rng.uniform(0, 1, 3)
        kind = rng.integers(3)
        if kind == 0:
            x0, y0 = rng.integers(-8, SIZE, 2)
            w, h = rng.integers(4, 24, 2)
            canvas[max(y0, 0):y0 + h, max(x0, 0):x0 + w] = color
        elif kind == 1:
            cx, cy = rng.uniform(0, SIZE, 2)
            rx, ry = rng.uniform(2, 12, 2)
            canvas[((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1] = color
        else:
            a, b = rng.uniform(-8, SIZE + 8, (2, 2))
            capsule(canvas, a, b, rng.uniform(1, 4), color, rng.uniform(-1, 1))
    return canvas


def render(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One sample: image [64, 64, 3] in [0, 1], joints [14, 2] (x, y) in image pixels,
    visibility [14] (1 inside the image), and the head segment length in pixels."""
    joints, params = skeleton(rng)
    height = rng.uniform(40, 64)
    unit = height / 7.8
    angle = math.radians(rng.uniform(-40, 40))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centred = joints - (joints.min(0) + joints.max(0)) / 2
    position = rng.uniform(SIZE / 4, 3 * SIZE / 4, 2)
    points = centred @ rotation.T * unit + position
    canvas = background(rng)
    skin, shirt, pants = (rng.uniform(0.15, 1.0, 3) for _ in range(3))
    light = rng.uniform(-1, 1)
    limbs = {  # (from, to, radius in H, colour) per side: upper arm, forearm, thigh, shin
        side: [(s, s + 2, 0.32, shirt), (s + 2, s + 4, 0.26, skin),
               (h, h + 2, 0.42, pants), (h + 2, h + 4, 0.34, pants)]
        for side, s, h in (("right", 2, 8), ("left", 3, 9))
    }
    near, far = ("left", "right") if params["near_left"] else ("right", "left")
    for a, b, radius, color in limbs[far]:
        capsule(canvas, points[a], points[b], radius * unit, color, light)
    pelvis = (points[8] + points[9]) / 2
    capsule(canvas, points[1], pelvis, 0.8 * unit, shirt, light)
    head_centre = points[1] + 0.62 * (points[0] - points[1])
    capsule(canvas, head_centre, head_centre, 0.55 * unit, skin, light)
    for a, b, radius, color in limbs[near]:
        capsule(canvas, points[a], points[b], radius * unit, color, light)
    canvas += rng.normal(0, rng.uniform(0.02, 0.08), canvas.shape)
    visible = ((points >= 0) & (points <= SIZE - 1)).all(1).astype(np.float32)
    head_size = float(np.linalg.norm(points[0] - points[1]))
    return np.clip(canvas, 0, 1), points.astype(np.float32), visible, head_size


def heatmaps(points: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Gaussian targets [14, 16, 16]: exp(-((i - u)^2 + (j - v)^2) / (2 sigma^2)) at the
    joint's heatmap coordinates, all zero for an invisible joint."""
    grid = np.arange(HEATMAP, dtype=np.float64)
    u = (points[:, 0] + 0.5) / STRIDE - 0.5
    v = (points[:, 1] + 0.5) / STRIDE - 0.5
    gx = np.exp(-((grid[None, :] - u[:, None]) ** 2) / (2 * SIGMA**2))
    gy = np.exp(-((grid[None, :] - v[:, None]) ** 2) / (2 * SIGMA**2))
    return (gy[:, :, None] * gx[:, None, :] * visible[:, None, None]).astype(np.float32)


@functools.lru_cache(maxsize=6)
def split(name: str, n: int, cache: Path | None = None) -> dict[str, Tensor]:
    """The first `n` samples of split `name` ("train", "val", "test") as tensors:
    images [n, 3, 64, 64] standardised to (x - 0.5) / 0.25, heatmaps [n, 14, 16, 16],
    joints [n, 14, 2] in image pixels, visible [n, 14], head_size [n]. With `cache`, kept
    there as a file once rendered (rendering costs a few milliseconds per image)."""
    path = None if cache is None else cache / f"pose-v{VERSION}-{name}-{n}.pt"
    if path is not None and path.exists():
        return torch.load(path, weights_only=True)
    samples = [render(np.random.default_rng((SPLIT_SEEDS[name], i))) for i in range(n)]
    images, points, visible, head = zip(*samples)
    tensors = {
        "images": torch.from_numpy(
            np.ascontiguousarray((np.stack(images).transpose(0, 3, 1, 2) - 0.5) / 0.25)
        ).float(),
        "heatmaps": torch.from_numpy(np.stack([heatmaps(p, v) for p, v in zip(points, visible)])),
        "joints": torch.from_numpy(np.stack(points)),
        "visible": torch.from_numpy(np.stack(visible)),
        "head_size": torch.tensor(head, dtype=torch.float32),
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(tensors, temporary)
        temporary.replace(path)  # atomic: parallel workers never read half a file
    return tensors
