"""Motion between frames, for stylising a clip without flicker (Ruder, Dosovitskiy & Brox,
"Artistic style transfer for videos and spherical images", IJCV 2018 / GCPR 2016).

All tensors are float32 on the CPU. A flow is (H, W, 2) in pixels, ``[..., 0]`` the x and
``[..., 1]`` the y displacement, and always means the same thing: ``optical_flow(a, b)``
says where each pixel of ``a`` is in ``b``, ``a[y, x] ≈ b[y + dy, x + dx]``, so that
``warp(b, optical_flow(a, b)) ≈ a``: ``b`` brought into ``a``'s layout. For a video the
flow that matters is the current frame's to the previous one: ``warp(previous_result,
optical_flow(current, previous))`` is the previous result where the current frame has its
content, the temporal loss's target, trusted where :func:`reliability` says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# DIS at full resolution (the medium preset stops at half) with 8 px patches every 4 px and
# 10 variational refinement steps: on a pan with a moving square (tests/test_flow.py) the
# preset's flow spills the square's motion about 5 px into the background it uncovers,
# consistently both ways, so the reliability check cannot see it. These settings: at 512 x
# 384 px, end-point error 0.07-0.10 px (preset 0.22-0.25), 0.01-0.02 px on the background,
# 0-12 % of the uncovered pixels passed as reliable (preset up to 61 %), about 0.2 s a
# flow on one core.
DIS_SETTINGS = {"finest_scale": 0, "patch": 8, "stride": 4, "refinement": 10}
# Ruder et al.'s thresholds (pixels): forward-backward consistency and motion boundaries.
CONSISTENCY = (0.01, 0.5)
BOUNDARY = (0.01, 0.002)
# scene_cuts: a new shot starts where consecutive frames' colour histograms are further
# apart than this (total variation, 0 to 1), or where the flow between them fails: fewer
# than CUT_RELIABLE of the pixels reliable.
CUT_HISTOGRAM = 0.5
CUT_RELIABLE = 0.5
CUT_SIZE = 128  # frames are compared at this long side at most
_BINS = 8  # histogram bins a channel


def _grey(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W) uint8 luma (Rec. 601, OpenCV's weights)."""
    rgb = (image[0].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def optical_flow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The flow (H, W, 2) from frame ``a`` to frame ``b``, both (1, 3, H, W) in [0, 1]:
    ``a[y, x] ≈ b[y + dy, x + dx]``. OpenCV's DIS (Kroeger et al. 2016) on the grey frames,
    finer than its medium preset (DIS_SETTINGS)."""
    if a.shape != b.shape:
        raise ValueError(f"frames of different sizes: {tuple(a.shape)} and {tuple(b.shape)}")
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(DIS_SETTINGS["finest_scale"])
    dis.setPatchSize(DIS_SETTINGS["patch"])
    dis.setPatchStride(DIS_SETTINGS["stride"])
    dis.setVariationalRefinementIterations(DIS_SETTINGS["refinement"])
    flow = dis.calc(_grey(a), _grey(b), None)
    return torch.from_numpy(flow)


def _grid(flow: torch.Tensor) -> torch.Tensor:
    """Sampling positions x + dx, y + dy in grid_sample's [-1, 1] (align_corners=True:
    -1 and 1 are the centres of the first and last pixels)."""
    h, w = flow.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    x = (xs + flow[..., 0]) * (2 / max(w - 1, 1)) - 1
    y = (ys + flow[..., 1]) * (2 / max(h - 1, 1)) - 1
    return torch.stack((x, y), dim=-1).unsqueeze(0)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``image`` (1, C, H, W) sampled bilinearly at (x + dx, y + dy) of ``flow`` (H, W, 2),
    the border repeated outside it: ``warp(b, optical_flow(a, b)) ≈ a``."""
    if image.shape[-2:] != flow.shape[:2]:
        raise ValueError(f"image {tuple(image.shape[-2:])} and flow {tuple(flow.shape[:2])} differ in size")
    grid = _grid(flow.to(image.device, torch.float32)).to(image.device)
    return F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)


def _outside(flow: torch.Tensor) -> torch.Tensor:
    """Pixels whose flow points out of the frame."""
    h, w = flow.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    return (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)


def reliability(flow_cur_to_prev: torch.Tensor, flow_prev_to_cur: torch.Tensor) -> torch.Tensor:
    """Where the flow of the current frame to the previous one can be trusted: (H, W), 1 or 0.

    Ruder et al.'s weights c: 0 at disocclusions (the previous-to-current flow, brought to
    the current frame's pixels, is not the opposite of the current-to-previous flow:
    ``|w̃ + ŵ|² > 0.01 (|w̃|² + |ŵ|²) + 0.5``), at motion boundaries (``|∇û|² + |∇v̂|² >
    0.01 |ŵ|² + 0.002``, ŵ = (û, v̂) the current-to-previous flow), and where the flow
    points out of the previous frame (what enters at the border); 1 elsewhere.
    """
    back = flow_cur_to_prev.float()
    forth = warp(flow_prev_to_cur.float().permute(2, 0, 1).unsqueeze(0), back)[0].permute(1, 2, 0)
    square = lambda v: (v * v).sum(dim=-1)  # noqa: E731
    disoccluded = square(forth + back) > CONSISTENCY[0] * (square(forth) + square(back)) + CONSISTENCY[1]
    gradient = sum(g * g for g in torch.gradient(back, dim=(0, 1)))  # (H, W, 2): per component, x and y
    boundary = gradient.sum(dim=-1) > BOUNDARY[0] * square(back) + BOUNDARY[1]
    return (~(disoccluded | boundary | _outside(back))).float()


def _histogram(image: torch.Tensor) -> torch.Tensor:
    """The joint RGB histogram (_BINS³ bins) of a (1, 3, H, W) image, summing to 1."""
    levels = (image[0].clamp(0, 1) * (_BINS - 1e-6)).long()
    index = (levels[0] * _BINS + levels[1]) * _BINS + levels[2]
    counts = torch.bincount(index.flatten(), minlength=_BINS ** 3).float()
    return counts / counts.sum()


def _small(image: torch.Tensor) -> torch.Tensor:
    h, w = image.shape[-2:]
    if max(h, w) <= CUT_SIZE:
        return image.float()
    scale = CUT_SIZE / max(h, w)
    return F.interpolate(image.float(), size=(max(1, round(h * scale)), max(1, round(w * scale))),
                         mode="area")


def scene_cuts(frames: Sequence[torch.Tensor]) -> list[int]:
    """The indices of ``frames`` where a new shot starts, 0 first: where the colour histogram
    jumps (total variation over CUT_HISTOGRAM) or the flow from the previous frame fails
    (less than CUT_RELIABLE of the pixels reliable). Frames are compared at CUT_SIZE px."""
    cuts = [0] if len(frames) else []
    previous = None
    for t, frame in enumerate(frames):
        current = _small(frame)
        if previous is not None:
            distance = 0.5 * (_histogram(current) - _histogram(previous)).abs().sum().item()
            if distance > CUT_HISTOGRAM:
                cuts.append(t)
            else:
                weights = reliability(optical_flow(current, previous), optical_flow(previous, current))
                if weights.mean().item() < CUT_RELIABLE:
                    cuts.append(t)
        previous = current
    return cuts


def warping_error(frames: Sequence[torch.Tensor], flows: Sequence[torch.Tensor | None],
                  weights: Sequence[torch.Tensor | None]) -> list[float]:
    """The temporal warping error of a clip, one figure a frame from frame 1: the mean over
    reliable pixels (weights[t]) and channels of ``(frames[t] - warp(frames[t-1], flows[t]))²``.
    ``flows[t]`` and ``weights[t]`` are the current-to-previous flow and reliability of frame t
    (of the input clip, to measure a result's flicker by its motion); entry 0 is not used (it
    may be None), or the sequences may start at frame 1 (one shorter than ``frames``). A
    frame with no reliable pixel (a cut) gives NaN."""
    offset = 0 if len(flows) == len(frames) else 1
    if len(flows) != len(frames) - offset or len(weights) != len(flows):
        raise ValueError(f"{len(frames)} frames need {len(frames)} or {len(frames) - 1} flows and weights, "
                         f"not {len(flows)} and {len(weights)}")
    errors = []
    for t in range(1, len(frames)):
        flow, weight = flows[t - offset], weights[t - offset].float()
        if frames[t].shape[-2:] != weight.shape:
            raise ValueError(f"frame {t} is {tuple(frames[t].shape[-2:])}, its flow {tuple(weight.shape)}")
        squared = (frames[t].float() - warp(frames[t - 1], flow)).pow(2).mean(dim=(0, 1))
        total = weight.sum().item()
        errors.append((squared * weight).sum().item() / total if total > 0 else math.nan)
    return errors
