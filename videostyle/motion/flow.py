"""Optical flow backends, warping, the Ruder et al. reliability mask, and a flow worker thread.

Convention:
    A flow is ``(H, W, 2)`` float32 in **pixels** of the image it is defined on; channel 0 = x (right),
    channel 1 = y (down). ``flow_a_to_b`` is defined on image A's grid: for a pixel ``p`` of A,
    ``A(p) ~ B(p + flow(p))`` (OpenCV's convention).
    The *backward* flow of frame t is ``flow(frame_t -> frame_{t-k})``; warping an earlier output with
    it aligns that output to frame t: ``warped(p) = prev(p + w_back(p))`` (bilinear; samples that fall
    outside the image take the nearest border pixel, and :func:`reliability_mask` marks them unreliable).
    Pixel centres sit at integer coordinates, so ``(0, 0)`` is the top-left pixel's centre and
    ``(W - 1, H - 1)`` the bottom-right one's (``align_corners=True`` in torch terms).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from videostyle import images
from videostyle.media.background import BackgroundIterator
from videostyle.errors import InputError, WeightsError
from videostyle.timing import PHASES


_DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
# RAFT downsamples by 8 and then builds a 4-level correlation pyramid, so feature maps need >= 16 px:
# inputs must be multiples of 8 and at least 128 px on each side.
_RAFT_MULTIPLE = 8
_RAFT_MIN_SIZE = 128
_RAFT_SEED = 0  # the "untrained" RAFT is seeded so that tests are reproducible


# --------------------------------------------------------------------------------------------------
# Estimators


@dataclass(frozen=True)
class FlowBackend:
    """One optical flow method: ``build(device, **options) -> (compute, weights_id)``, where
    ``compute(a, b)`` gives the flow ``(H, W, 2)`` from ``a`` to ``b`` (both ``(H, W, 3)`` uint8 RGB).
    ``torch``: it runs on the run's torch device (``--device``); otherwise on the CPU."""

    name: str
    build: Callable[..., tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], str]]
    torch: bool = False


# name -> backend, in the order --flow lists them. A new backend: one builder registered with
# @flow_backend (docs/ARCHITECTURE.md, "where does this change go?").
FLOW_BACKENDS: dict[str, FlowBackend] = {}


def flow_backend(name: str, *, torch_device: bool = False):
    """Register ``build(device, *, weights, dis_preset, raft_updates) -> (compute, weights_id)`` as
    flow method ``name``."""
    def register(build):
        FLOW_BACKENDS[name] = FlowBackend(name, build, torch_device)
        return build
    return register


@flow_backend("dis")
def _build_dis(device, *, dis_preset: str = "medium", **_):
    if dis_preset not in _DIS_PRESETS:
        raise ValueError(f"DIS preset must be one of {', '.join(_DIS_PRESETS)}; got {dis_preset!r}")
    dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[dis_preset])
    return (lambda a, b: dis.calc(_gray(a), _gray(b), None)), "none"


@flow_backend("farneback")
def _build_farneback(device, **_):
    def compute(a, b):
        # levels=5 so that motions of tens of pixels at ~512 px are still within reach.
        return cv2.calcOpticalFlowFarneback(_gray(a), _gray(b), None, pyr_scale=0.5, levels=5,
                                            winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
    return compute, "none"


class _RaftFlow:
    """RAFT's flow, as a backend's ``compute``; ``model`` is the torchvision module."""

    def __init__(self, method: str, model: torch.nn.Module, device: torch.device, updates: int):
        self.method, self.model, self.device, self.updates = method, model, device, updates

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _raft_flow(self.method, self.model, self.device, self.updates, a, b)


def _build_raft(method: str, device, *, weights: str = "auto", raft_updates: int = 12, **_):
    model, weights_id = _load_raft(method, weights)
    return _RaftFlow(method, model.to(device).eval(), device, int(raft_updates)), weights_id


flow_backend("raft-small", torch_device=True)(functools.partial(_build_raft, "raft-small"))
flow_backend("raft-large", torch_device=True)(functools.partial(_build_raft, "raft-large"))
FLOW_METHODS = tuple(FLOW_BACKENDS)


class FlowEstimator:
    """Dense optical flow between two RGB frames; holds the backend state (DIS object, RAFT model).

    Methods: ``dis`` (OpenCV DIS, default: no weights, fast on a CPU), ``farneback`` (OpenCV),
    ``raft-small`` / ``raft-large`` (torchvision RAFT; needs weights, best on a GPU).

    Args:
        method: one of :data:`FLOW_METHODS`.
        device: torch device for RAFT (``"auto"`` = CUDA when available, else CPU); ignored by the
            OpenCV methods, which run on the CPU.
        weights: RAFT only. ``"auto"``: torchvision's ``Raft_*_Weights.DEFAULT`` from the torch hub
            cache (``torch.hub.get_dir()/checkpoints``), downloaded if the network allows;
            ``"untrained"``: seeded random weights (tests only: its flows are meaningless);
            or a path to a state dict.
        dis_preset: DIS speed/quality preset: ``ultrafast``, ``fast`` or ``medium`` (default).
        raft_updates: RAFT's number of recurrent refinement steps (torchvision's default 12).

    Raises:
        ValueError: unknown method or preset.
        WeightsError: RAFT weights cannot be loaded (message says where to put the file).

    Attributes:
        method, device, weights_id (what was loaded: ``"none"`` for OpenCV, ``"torchvision:<enum>"``,
        ``"untrained-seed0"`` or the state-dict path).

    Not thread-safe: use one estimator per thread.
    """

    def __init__(self, method: str = "dis", *, device: str | torch.device = "cpu", weights: str = "auto",
                 dis_preset: str = "medium", raft_updates: int = 12) -> None:
        if method not in FLOW_BACKENDS:
            raise ValueError(f"flow method must be one of {', '.join(FLOW_METHODS)}; got {method!r}")
        backend = FLOW_BACKENDS[method]
        self.method = method
        self.device = _resolve_device(device) if backend.torch else torch.device("cpu")
        self._compute, self.weights_id = backend.build(self.device, weights=weights, dis_preset=dis_preset,
                                                       raft_updates=raft_updates)
        self.model = getattr(self._compute, "model", None)  # RAFT's torch module (None for OpenCV's)

    def __repr__(self) -> str:
        return f"FlowEstimator({self.method!r}, device={str(self.device)!r}, weights={self.weights_id!r})"

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Flow from ``a`` to ``b``.

        Args:
            a, b: ``(H, W, 3)`` uint8 RGB frames of the same size.
        Returns:
            ``(H, W, 2)`` float32 px on ``a``'s grid, channel 0 = x: ``a(p) ~ b(p + flow(p))``.
        """
        _check_rgb_pair(a, b)
        return np.ascontiguousarray(self._compute(a, b), dtype=np.float32)


def _raft_flow(method: str, model, device: torch.device, updates: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    h, w = a.shape[:2]
    pad_h = max(_round_up(h, _RAFT_MULTIPLE), _RAFT_MIN_SIZE) - h
    pad_w = max(_round_up(w, _RAFT_MULTIPLE), _RAFT_MIN_SIZE) - w
    batch = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2).to(device)  # (2,3,H,W) uint8
    # torchvision's preset: uint8 -> float in [0, 1] -> normalised to [-1, 1].
    img1, img2 = _raft_transforms(method)(batch[:1], batch[1:])
    if pad_h or pad_w:
        # Replicate (not zeros) so the padding looks like a static continuation of the border.
        img1 = F.pad(img1, (0, pad_w, 0, pad_h), mode="replicate")
        img2 = F.pad(img2, (0, pad_w, 0, pad_h), mode="replicate")
    with torch.inference_mode():
        flow = model(img1, img2, num_flow_updates=updates)[-1]  # (1,2,H',W') px
    return flow[0, :, :h, :w].permute(1, 2, 0).float().cpu().numpy()


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _check_rgb_pair(a: np.ndarray, b: np.ndarray) -> None:
    for name, img in (("a", a), ("b", b)):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            got = (f"{img.dtype} array of shape {img.shape}" if isinstance(img, np.ndarray)
                   else type(img).__name__)
            raise ValueError(f"flow input {name} must be an (H, W, 3) uint8 RGB array; got {got}")
    if a.shape != b.shape:
        # A stream whose resolution changes mid-way ends up here: a user input problem.
        raise InputError(f"flow needs two frames of the same size; got {a.shape[1]}x{a.shape[0]} "
                         f"and {b.shape[1]}x{b.shape[0]}")


def _raft_weights_enum(method: str):
    from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights

    return Raft_Small_Weights.DEFAULT if method == "raft-small" else Raft_Large_Weights.DEFAULT


def _raft_transforms(method: str):
    return _raft_weights_enum(method).transforms()


def raft_cache_path(method: str) -> str:
    """Where ``weights="auto"`` looks for the torchvision RAFT checkpoint of ``method``."""
    url = _raft_weights_enum(method).url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _load_raft(method: str, weights: str) -> tuple[torch.nn.Module, str]:
    """Builds the RAFT model for ``method`` and loads ``weights``; returns ``(model on CPU, weights_id)``."""
    from torchvision.models.optical_flow import raft_large, raft_small

    build = raft_small if method == "raft-small" else raft_large
    if weights == "untrained":
        # fork_rng: seeding must not disturb the caller's global RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_RAFT_SEED)
            return build(weights=None), f"untrained-seed{_RAFT_SEED}"
    model = build(weights=None)
    if weights == "auto":
        enum = _raft_weights_enum(method)
        cache = raft_cache_path(method)
        try:
            if os.path.isfile(cache):
                state = torch.load(cache, map_location="cpu", weights_only=True)
            else:
                state = torch.hub.load_state_dict_from_url(enum.url, progress=False, map_location="cpu")
            model.load_state_dict(state)
        except Exception as exc:  # no network, corrupt file, ...: one line that says how to fix it
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WeightsError(f"{method} needs torchvision weights {enum} at {cache} (download "
                               f"{enum.url} there); got: {reason}") from exc
        return model, f"torchvision:{enum}"
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise WeightsError(f"{method} weights must be 'auto', 'untrained' or a state-dict file; "
                           f"got {weights!r} (no such file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"expected a {method} state dict in {path!r}; got: {reason}") from exc
    return model, path


# --------------------------------------------------------------------------------------------------
# Warping


def warp(image: torch.Tensor, flow: torch.Tensor | np.ndarray, *, mode: str = "bilinear") -> torch.Tensor:
    """Samples ``image`` at ``p + flow(p)`` (bilinear, border replicate); differentiable in ``image``.

    ``mode="bicubic"`` keeps more of the image's fine texture (Keys a=-0.75; it can overshoot the input's
    range, so clamp where that matters).

    Args:
        image: ``(B, C, H, W)`` float, any range (e.g. an earlier output in [0, 1]).
        flow: ``(H, W, 2)`` or ``(B, H, W, 2)`` px, channel 0 = x, defined on the *output* grid;
            typically the backward flow t -> t-k, which aligns frame t-k's image to frame t.
            A numpy array is accepted and moved to ``image``'s device and dtype.
    Returns:
        ``(B, C, H, W)``, same dtype and device as ``image``: ``out(p) = image(p + flow(p))``.
    """
    if image.ndim != 4:
        raise ValueError(f"warp image must be (B, C, H, W); got shape {tuple(image.shape)}")
    flow = torch.as_tensor(flow).to(device=image.device, dtype=image.dtype)
    b, _, h, w = image.shape
    given = tuple(flow.shape)
    if flow.ndim == 3:
        flow = flow.unsqueeze(0)
    if flow.ndim != 4 or flow.shape[1:] != (h, w, 2) or flow.shape[0] not in (1, b):
        raise ValueError(f"warp flow must be ({h}, {w}, 2) or ({b}, {h}, {w}, 2) to match the image; "
                         f"got {given}")
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=image.dtype),
                            torch.arange(w, device=image.device, dtype=image.dtype), indexing="ij")
    # align_corners=True: -1 and +1 are the centres of the first and last pixels.
    gx = (xs + flow[..., 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[..., 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1).expand(b, h, w, 2)
    return F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=True)


_REMAP_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def warp_numpy(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Same as :func:`warp` for arrays: ``out(p) = image(p + flow(p))`` via ``cv2.remap``.

    Args:
        image: ``(H, W)`` or ``(H, W, C)``, any numeric dtype (integers are rounded back, bool
            thresholded at 0.5). OpenCV quantises sample positions to 1/32 px.
        flow: ``(H, W, 2)`` px, channel 0 = x, on the output grid (e.g. the backward flow t -> t-k).
    Returns:
        Array of ``image``'s shape and dtype; samples outside the image take the nearest border pixel.
    """
    h, w = image.shape[:2]
    if flow.shape != (h, w, 2):
        raise ValueError(f"warp_numpy flow must be ({h}, {w}, 2) to match the image; got {flow.shape}")
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x = xs + flow[..., 0].astype(np.float32)
    map_y = ys + flow[..., 1].astype(np.float32)
    src = image if image.dtype in _REMAP_DTYPES else image.astype(np.float64)
    out = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if out.ndim == image.ndim - 1:  # remap drops a trailing channel axis of size 1
        out = out[..., None]
    if out.dtype == image.dtype:
        return out
    if image.dtype == np.bool_:
        return out >= 0.5
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
    return out.astype(image.dtype)


# --------------------------------------------------------------------------------------------------
# Reliability (Ruder et al. 2016, section 3.2)


def reliability_mask(flow_back: np.ndarray, flow_fwd: np.ndarray, *, fb_ratio: float = 0.01,
                     fb_offset: float = 0.5, motion_ratio: float = 0.01,
                     motion_offset: float = 0.002) -> np.ndarray:
    """Where warping frame t-k to frame t can be trusted (Ruder, Dosovitskiy, Brox, GCPR 2016).

    With ``w = flow_back`` and ``ŵ = flow_fwd`` and ``w̃(p) = ŵ(p + w(p))`` (the forward flow
    brought to frame t's grid), a pixel ``p`` of frame t is reliable iff all of:

    * forward-backward consistent: ``|w + w̃|² < fb_ratio (|w|² + |w̃|²) + fb_offset`` (else disoccluded);
    * not a motion boundary: ``|∇u|² + |∇v|² <= motion_ratio |w|² + motion_offset``, gradients of
      ``w = (u, v)`` by central differences (edge-replicated at the border);
    * ``p + w(p)`` lies inside frame t-k (``0 <= x <= W-1``, ``0 <= y <= H-1``).

    Args:
        flow_back: ``(H, W, 2)`` float px, frame t -> t-k, on frame t's grid.
        flow_fwd: ``(H, W, 2)`` float px, frame t-k -> t, on frame t-k's grid.
        fb_ratio, fb_offset: forward-backward tolerance (px² offset).
        motion_ratio, motion_offset: motion-boundary tolerance (px²/px² offset).
    Returns:
        ``(H, W)`` float32 in {0, 1}, 1 = reliable, on frame t's grid.
    """
    if flow_back.ndim != 3 or flow_back.shape[2] != 2 or flow_fwd.shape != flow_back.shape:
        raise ValueError(f"reliability_mask needs two (H, W, 2) flows of the same shape; "
                         f"got {flow_back.shape} and {flow_fwd.shape}")
    w = np.ascontiguousarray(flow_back, dtype=np.float32)
    w_tilde = warp_numpy(np.ascontiguousarray(flow_fwd, dtype=np.float32), w)
    u, v, ut, vt = w[..., 0], w[..., 1], w_tilde[..., 0], w_tilde[..., 1]
    w_sq = u * u + v * v
    consistent = (u + ut) ** 2 + (v + vt) ** 2 < fb_ratio * (w_sq + ut * ut + vt * vt) + fb_offset
    boundary = flow_gradient_sq(w) > motion_ratio * w_sq + motion_offset
    h, wd = w_sq.shape
    tx = u + np.arange(wd, dtype=np.float32)[None, :]
    ty = v + np.arange(h, dtype=np.float32)[:, None]
    inside = (tx >= 0) & (tx <= wd - 1) & (ty >= 0) & (ty <= h - 1)
    return (consistent & ~boundary & inside).astype(np.float32)


_CENTRAL_DIFF = np.array([[-0.5, 0.0, 0.5]], np.float32)


def flow_gradient_sq(flow: np.ndarray) -> np.ndarray:
    """``|∇u|² + |∇v|²`` of a flow ``(H, W, 2)`` px -> ``(H, W)`` float32 (px/px)².

    Central differences ``(f[x+1] - f[x-1]) / 2``, edge-replicated at the border.
    """
    f = np.ascontiguousarray(flow, dtype=np.float32)
    dx = cv2.filter2D(f, cv2.CV_32F, _CENTRAL_DIFF, borderType=cv2.BORDER_REPLICATE)
    dy = cv2.filter2D(f, cv2.CV_32F, _CENTRAL_DIFF.T, borderType=cv2.BORDER_REPLICATE)
    return dx[..., 0] ** 2 + dx[..., 1] ** 2 + dy[..., 0] ** 2 + dy[..., 1] ** 2


# --------------------------------------------------------------------------------------------------
# Flow records for a frame stream


@dataclass(frozen=True)
class FrameFlows:
    """Flows for one source frame t.

    Attributes:
        index: frame number t (from the source frame's ``.index``).
        rgb: the source frame as given, ``(H, W, 3)`` uint8 (not resized).
        back: ``{k: (h, w, 2) float32 px}`` backward flow t -> t-k at the flow resolution
            (``resize_to`` if given, else the source size); only for k whose frame t-k was seen.
        mask: ``{k: (h, w) float32 in {0, 1}}`` :func:`reliability_mask` of ``back[k]``.
        pts: the source frame's ``.pts`` if it has one, else None.
    """

    index: int
    rgb: np.ndarray
    back: dict[int, np.ndarray] = field(default_factory=dict)
    mask: dict[int, np.ndarray] = field(default_factory=dict)
    pts: Any = None


def _check_offsets(offsets: Iterable[int]) -> tuple[int, ...]:
    offs = tuple(sorted(set(int(k) for k in offsets)))
    if not offs or offs[0] < 1:
        raise ValueError(f"flow offsets must be positive integers such as (1,) or (1, 2, 4); got {offsets!r}")
    return offs


def iter_frame_flows(frames: Iterable, estimator: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                     offsets: Sequence[int] = (1,), resize_to: tuple[int, int] | None = None
                     ) -> Iterator[FrameFlows]:
    """Synchronous flow records: for each source frame t, flows t -> t-k and masks for every offset k.

    Args:
        frames: iterable of objects with ``.index`` (int) and ``.rgb`` ``(H, W, 3)`` uint8, in order.
        estimator: ``(a, b) -> flow a->b`` (a :class:`FlowEstimator`).
        offsets: frame distances k (1 = previous frame; more for Ruder's long-term terms).
        resize_to: ``(W, H)``: estimate on frames resized to the working size (flows in its pixels).
    Yields:
        :class:`FrameFlows`; ``back``/``mask`` hold only the k for which frame ``t-k`` was among
        the frames seen (empty for the first frame). Costs two flows per offset per frame.
    Raises:
        ValueError: at the call (not at the first ``next``) for bad ``offsets``.
    """
    return _frame_flows(frames, estimator, _check_offsets(offsets), resize_to)


def _frame_flows(frames: Iterable, estimator: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 offs: tuple[int, ...], resize_to: tuple[int, int] | None) -> Iterator[FrameFlows]:
    keep = offs[-1]
    recent: dict[int, np.ndarray] = {}  # index -> frame at flow resolution, the last `keep` frames
    for frame in frames:
        t = int(frame.index)
        cur = frame.rgb if resize_to is None else images.resize_rgb(frame.rgb, tuple(resize_to))
        back, mask = {}, {}
        for k in offs:
            prev = recent.get(t - k)
            if prev is None:
                continue
            with PHASES.measure("flow"):
                back[k] = estimator(cur, prev)
                mask[k] = reliability_mask(back[k], estimator(prev, cur))
        yield FrameFlows(t, frame.rgb, back, mask, getattr(frame, "pts", None))
        recent[t] = cur
        for old in [i for i in recent if i <= t - keep]:
            del recent[old]


class FlowWorker(BackgroundIterator["FrameFlows"]):
    """Computes :func:`iter_frame_flows` records ahead of the consumer in a background thread.

    Flow needs only source frames, so it runs while the optimiser works on earlier frames.
    At most ``depth`` finished records wait in the queue. An exception in the thread (from the frame
    iterator or the estimator) is re-raised by the consumer's ``for`` loop, after the records made
    before it. ``close()`` (or leaving the ``with`` block) stops the thread promptly: it returns
    once the thread finishes its current flow, or after 5 s if the frame iterator blocks.
    The source iterator is not closed here: its owner closes it.

    Args:
        frames: iterator of objects with ``.index`` and ``.rgb`` ``(H, W, 3)`` uint8.
        estimator: a :class:`FlowEstimator` (used only by the worker thread from then on).
        offsets, resize_to: as :func:`iter_frame_flows`.
        depth: queue size (records computed ahead), >= 1.
    """

    def __init__(self, frames: Iterator, estimator: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                 offsets: Sequence[int] = (1,), depth: int = 4,
                 resize_to: tuple[int, int] | None = None) -> None:
        if depth < 1:
            raise ValueError(f"FlowWorker depth must be >= 1; got {depth}")
        records = iter_frame_flows(frames, estimator, offsets=_check_offsets(offsets), resize_to=resize_to)
        super().__init__(records, depth=depth, name="videostyle-flow", join_timeout=5.0)
