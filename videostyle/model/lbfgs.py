"""L-BFGS for one image variable that keeps its numbers on the device.

The maths is ``torch.optim.LBFGS``'s with ``max_iter=1`` and no line search (neural-style's setting:
one objective evaluation per iteration, step length 1 after a first step of ``min(1, 1/|g|_1)``):
the same two-loop recursion, the same curvature test ``y.s > 1e-10``, the same order of operations.
What differs is where the scalars live. torch's version passes each history coefficient as a Python
number (``q.add_(y_i, alpha=-al[i])``), so every history pair costs a host-device synchronisation:
about 100 per iteration with 50 pairs. Measured on an H200 at 1280x720 (docs/BENCHMARKS.md), an
iteration took 1.43x a bare VGG forward+backward. Here the coefficients stay 0-d tensors on the
device and a step synchronises once: to read ``y.s > 1e-10``, whose answer decides what the history
holds.

Convention:
    The variable is any float32 tensor (an image ``(1, 3, H, W)``); the history holds flattened
    float32 vectors of its size (``history_size`` pairs, see :mod:`videostyle.model.memory`).
"""

from __future__ import annotations

from typing import Callable

import torch

# torch.optim.LBFGS's curvature condition: a pair with y.s at or below this is not kept.
_CURVATURE_EPS = 1e-10


class LBFGS:
    """``step(closure)`` runs one iteration, as ``torch.optim.LBFGS(max_iter=1, lr=lr,
    tolerance_grad=0, tolerance_change=0, line_search_fn=None)`` does.

    ``closure()`` zeroes nothing itself: it must compute the objective at the variable, call
    ``backward()`` and return the (detached) loss; this class clears the gradient before each call.
    Differences from torch's version, in cases that do not arise with the style objective: a
    gradient that is exactly zero everywhere still takes a (zero) step and is not an early stop.
    """

    def __init__(self, variable: torch.Tensor, *, history_size: int, lr: float = 1.0):
        if not variable.requires_grad:
            raise ValueError("the L-BFGS variable must require grad")
        self.x = variable
        self.history_size = history_size
        self.lr = lr
        self.s: list[torch.Tensor] = []    # steps x_{k+1} - x_k, oldest first
        self.y: list[torch.Tensor] = []    # gradient changes g_{k+1} - g_k
        self.rho: list[torch.Tensor] = []  # 1 / (y.s), 0-d
        self.h_diag: torch.Tensor | None = None  # initial inverse Hessian scale (y.s / y.y), 0-d
        self.d: torch.Tensor | None = None       # last direction
        self.t: torch.Tensor | None = None  # last step length, 0-d
        self.prev_grad: torch.Tensor | None = None
        self.iterations = 0

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        self.x.grad = None
        loss = closure()
        grad = self.x.grad.reshape(-1)
        self.iterations += 1
        if self.iterations == 1:
            d = grad.neg()
            self.h_diag = torch.ones((), device=grad.device, dtype=grad.dtype)
        else:
            y = grad.sub(self.prev_grad)
            s = self.d.mul(self.t)
            ys = y.dot(s)
            if ys > _CURVATURE_EPS:  # the one read-back of a step
                if len(self.s) == self.history_size:
                    self.s.pop(0)
                    self.y.pop(0)
                    self.rho.pop(0)
                self.y.append(y)
                self.s.append(s)
                self.rho.append(1.0 / ys)
                self.h_diag = ys / y.dot(y)
            d = self._two_loop(grad)
        if self.prev_grad is None:
            self.prev_grad = grad.clone(memory_format=torch.contiguous_format)
        else:
            self.prev_grad.copy_(grad)
        if self.iterations == 1:  # torch: t = min(1, 1/|g|_1) * lr
            t = torch.clamp(1.0 / grad.abs().sum(), max=1.0) * self.lr
        else:
            t = torch.full((), self.lr, device=grad.device, dtype=grad.dtype)
        # torch takes no step when d is not a descent direction (g.d > -tolerance_change, which is 0).
        step = torch.where(grad.dot(d) > 0, torch.zeros_like(t), t)
        with torch.no_grad():
            self.x.addcmul_(d.view_as(self.x), step)
        self.d, self.t = d, t
        return loss

    def _two_loop(self, grad: torch.Tensor) -> torch.Tensor:
        """The L-BFGS direction ``-H g`` from the history (Nocedal & Wright, algorithm 7.4)."""
        q = grad.neg()
        alphas = [None] * len(self.s)
        for i in range(len(self.s) - 1, -1, -1):
            alphas[i] = self.s[i].dot(q) * self.rho[i]
            q.addcmul_(self.y[i], alphas[i], value=-1)
        r = q.mul(self.h_diag)
        for i in range(len(self.s)):
            beta = self.y[i].dot(r) * self.rho[i]
            r.addcmul_(self.s[i], alphas[i] - beta)
        return r
