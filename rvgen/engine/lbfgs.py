"""Batched L-BFGS: B images optimised at once, each with its own history and line search.

``torch.optim.LBFGS`` treats all its parameters as one vector, so a batch of images would
share one history, one step size and one line search: an image's result would depend on
its batch mates. Here every image is its own L-BFGS problem (the same algorithm as
``torch.optim.LBFGS``: two-loop recursion, the first step scaled by 1/|g|₁, the
strong-Wolfe line search of ``lswolfe.lua`` with cubic interpolation), and only the
objective's evaluation is shared: each round evaluates every image at the point its own
optimiser asks for, in one backbone pass.

The vector work (histories, two-loop recursion, trial points) is batched tensor code; the
line search's decisions are scalar, per image, in Python, as a generator that yields trial
steps and is sent ``(loss, directional derivative)`` back. Images that have finished (their
line searches need different numbers of evaluations) drop out of the evaluated batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch

C1, C2 = 1e-4, 0.9  # sufficient decrease and curvature constants of the Wolfe conditions
MAX_LINE_SEARCH = 25
CURVATURE_EPS = 1e-10  # a pair (s, y) with yᵀs below this is not added to the history
TOLERANCE_WINDOW = 10  # iterations over which ``tolerance`` measures the loss's relative fall

Evaluate = Callable[[torch.Tensor, "list[int] | None"], tuple[torch.Tensor, torch.Tensor]]
"""(k, n) points of rows ``rows`` (None: all B rows) -> ((k,) losses, (k, n) gradients)."""


def cubic_minimum(t1: float, f1: float, g1: float, t2: float, f2: float, g2: float,
                  bounds: tuple[float, float] | None = None) -> float:
    """Minimiser of the cubic through two points with values and slopes, clipped to bounds."""
    lo, hi = bounds if bounds is not None else (min(t1, t2), max(t1, t2))
    try:
        d1 = g1 + g2 - 3 * (f1 - f2) / (t1 - t2)
        d2_square = d1 * d1 - g1 * g2
        if d2_square < 0:
            return (lo + hi) / 2
        d2 = math.sqrt(d2_square)
        if t1 <= t2:
            t = t2 - (t2 - t1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            t = t1 - (t1 - t2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    except ZeroDivisionError:
        return (lo + hi) / 2
    if not math.isfinite(t):
        return (lo + hi) / 2
    return min(max(t, lo), hi)


LineSearch = Generator[float, tuple[float, float], float]


def strong_wolfe(f0: float, gtd0: float, t: float, d_norm: float, tolerance: float = 0.0) -> LineSearch:
    """A strong-Wolfe line search along one image's direction, as a generator.

    Yields the step to evaluate next; is sent ``(f, gtd)`` there (loss and derivative along
    the direction); returns the accepted step, which is the last one evaluated, a previous
    one, or 0 (no decrease found). ``d_norm`` is the direction's max-norm and ``tolerance``
    the smallest bracket width (in pixel units) worth refining.
    """
    f_new, gtd_new = yield t
    evals = 1
    t_prev, f_prev, gtd_prev = 0.0, f0, gtd0
    bracket: list[float] = []
    bracket_f: list[float] = []
    bracket_gtd: list[float] = []
    # Bracketing: grow the step until an interval must contain an acceptable point.
    while True:
        if evals > MAX_LINE_SEARCH:  # out of trials: between the start and the last one
            bracket, bracket_f, bracket_gtd = [0.0, t], [f0, f_new], [gtd0, gtd_new]
            break
        if f_new > f0 + C1 * t * gtd0 or (evals > 2 and f_new >= f_prev):
            bracket, bracket_f, bracket_gtd = [t_prev, t], [f_prev, f_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -C2 * gtd0:
            return t
        if gtd_new >= 0:
            bracket, bracket_f, bracket_gtd = [t_prev, t], [f_prev, f_new], [gtd_prev, gtd_new]
            break
        step = cubic_minimum(t_prev, f_prev, gtd_prev, t, f_new, gtd_new,
                             bounds=(t + 0.01 * (t - t_prev), t * 10))
        t_prev, f_prev, gtd_prev = t, f_new, gtd_new
        t = step
        f_new, gtd_new = yield t
        evals += 1
    # Zoom: shrink the bracket around a point that meets both conditions.
    low, high = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
    insufficient = False
    while evals < MAX_LINE_SEARCH + 1:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance:
            break
        t = cubic_minimum(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        top, bottom = max(bracket), min(bracket)
        eps = 0.1 * (top - bottom)
        if min(top - t, t - bottom) < eps:  # too close to an end: move inside, unless first time
            if insufficient or t >= top or t <= bottom:
                t = top - eps if abs(t - top) < abs(t - bottom) else bottom + eps
                insufficient = False
            else:
                insufficient = True
        else:
            insufficient = False
        f_new, gtd_new = yield t
        evals += 1
        if f_new > f0 + C1 * t * gtd0 or f_new >= bracket_f[low]:
            bracket[high], bracket_f[high], bracket_gtd[high] = t, f_new, gtd_new
            low, high = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
            continue
        wolfe = abs(gtd_new) <= -C2 * gtd0
        if not wolfe and gtd_new * (bracket[high] - bracket[low]) >= 0:
            bracket[high], bracket_f[high], bracket_gtd[high] = bracket[low], bracket_f[low], bracket_gtd[low]
        bracket[low], bracket_f[low], bracket_gtd[low] = t, f_new, gtd_new
        if wolfe:
            break
    return bracket[low]


@dataclass
class ImageState:
    """One image's scalar L-BFGS state; its vectors are rows of the batched tensors."""

    loss: float = math.nan
    initial_loss: float = math.nan
    iterations: int = 0
    evaluations: int = 0
    history: int = 0  # pairs stored
    head: int = 0  # slot the next pair goes to
    step: float = 0.0  # step of the current trial point along the direction
    accepted: float = 0.0  # step of the last accepted move
    search: LineSearch | None = None
    phase: str = "new"  # new (needs a direction) | search | reeval | done
    error: str | None = None
    recent: list[float] = field(default_factory=list)  # losses of the last iterations (for tolerance)
    converged: bool = False  # stopped by ``tolerance`` before its iterations


def batched_lbfgs(
    evaluate: Evaluate,
    x0: torch.Tensor,
    iterations: int,
    lr: float = 1.0,
    history: int = 50,
    line_search: bool = True,
    tolerance: float = 0.0,
    max_evaluations: int | None = None,
    on_iteration: Callable[[int, ImageState, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, list[ImageState]]:
    """Minimise B independent functions of (B, n) ``x0`` rows; returns the points and states.

    ``evaluate`` gives every row's loss and gradient in one call. An image whose loss
    becomes non-finite stops with ``state.error`` set; the others go on. With ``tolerance``
    > 0 an image also stops once its loss fell by less than that fraction over the last
    :data:`TOLERANCE_WINDOW` iterations (``state.converged``).
    ``on_iteration(b, state, point)`` is called after each of image b's iterations, with the
    row it moved to (a view, valid during the call: copy it to keep it).
    """
    solver = _Batch(evaluate, x0, history)
    limits = _Limits(iterations, lr, line_search, tolerance,
                     max_evaluations or iterations * (2 if line_search else 1) + 1)
    while True:
        starting = [i for i, st in enumerate(solver.states) if st.phase == "new"]
        if starting:
            solver.start_iterations(starting, limits)
        active = [st.phase in ("search", "reeval") for st in solver.states]
        if not any(active):
            break
        trial, f_new, g_new = solver.evaluate_trials(active)
        values = torch.stack([f_new.detach().to(solver.x.dtype), (g_new * solver.d).sum(1)]).tolist()
        take = torch.zeros(solver.b, dtype=torch.bool)  # rows whose evaluated point becomes the iterate
        for i, st in enumerate(solver.states):
            if active[i] and _advance(st, values[0][i], values[1][i], limits):
                take[i] = True
                if on_iteration is not None:
                    on_iteration(i, st, trial[i])
        if take.any():
            rows_taken = take.to(solver.dev).unsqueeze(1)
            solver.x = torch.where(rows_taken, trial, solver.x)
            solver.g = torch.where(rows_taken, g_new, solver.g)
    return solver.x, solver.states


@dataclass(frozen=True)
class _Limits:
    """The settings of one :func:`batched_lbfgs` call."""

    iterations: int
    lr: float
    line_search: bool
    tolerance: float
    max_evaluations: int


class _Batch:
    """The batched vectors of B images' L-BFGS: iterates, gradients, directions, histories."""

    def __init__(self, evaluate: Evaluate, x0: torch.Tensor, history: int):
        self.evaluate, self.history = evaluate, history
        self.b, n = x0.shape
        self.dev = dev = x0.device
        self.states = [ImageState() for _ in range(self.b)]
        self.x = x = x0.detach().clone()
        self.d = torch.zeros_like(x)
        self.prev_g = torch.zeros_like(x)
        self.s_hist = torch.zeros(self.b, history, n, device=dev, dtype=x.dtype)
        self.y_hist = torch.zeros(self.b, history, n, device=dev, dtype=x.dtype)
        self.rho = torch.zeros(self.b, history, device=dev, dtype=x.dtype)
        self.h_diag = torch.ones(self.b, device=dev, dtype=x.dtype)
        self.rows = torch.arange(self.b, device=dev)
        f, g = evaluate(x, None)
        self.g = g.detach().clone()
        for st, value in zip(self.states, f.tolist()):
            st.loss = st.initial_loss = value
            st.evaluations = 1
            if not math.isfinite(value):
                st.phase, st.error = "done", f"the loss became {value} at iteration 1"

    def take_history(self, mask: list[int]) -> None:
        """Store (s, y) of the images in ``mask`` that just took a step (after their first)."""
        states, dev = self.states, self.dev
        idx = [i for i in mask if states[i].iterations > 1]
        if not idx:
            return
        ix = torch.tensor(idx, device=dev)
        s = self.d[ix] * torch.tensor([states[i].accepted for i in idx], device=dev, dtype=self.x.dtype).unsqueeze(1)
        y = self.g[ix] - self.prev_g[ix]
        ys, yy = (y * s).sum(1), (y * y).sum(1)
        for k, (i, ys_i) in enumerate(zip(idx, ys.tolist())):
            st = states[i]
            if ys_i > CURVATURE_EPS:
                self.s_hist[i, st.head], self.y_hist[i, st.head], self.rho[i, st.head] = s[k], y[k], 1.0 / ys[k]
                self.h_diag[i] = ys[k] / yy[k]
                st.head = (st.head + 1) % self.history
                st.history = min(st.history + 1, self.history)

    def two_loop(self) -> torch.Tensor:
        """-H g for every row, with each row's own history (newest pair first)."""
        rows, rho, s_hist, y_hist = self.rows, self.rho, self.s_hist, self.y_hist
        q = -self.g
        depth = max(st.history for st in self.states)
        alphas, slots = [], []
        for j in range(depth):
            slot = [(st.head - 1 - j) % self.history if j < st.history else -1 for st in self.states]
            valid = torch.tensor([s >= 0 for s in slot], device=self.dev, dtype=self.x.dtype)
            pick = torch.tensor([max(s, 0) for s in slot], device=self.dev)
            slots.append((pick, valid))
            a = (s_hist[rows, pick] * q).sum(1) * rho[rows, pick] * valid
            q = q - a.unsqueeze(1) * y_hist[rows, pick]
            alphas.append(a)
        r = q * self.h_diag.unsqueeze(1)
        for j in reversed(range(depth)):
            pick, valid = slots[j]
            beta = (y_hist[rows, pick] * r).sum(1) * rho[rows, pick] * valid
            r = r + s_hist[rows, pick] * (alphas[j] - beta).unsqueeze(1)
        return r

    def start_iterations(self, starting: list[int], limits: _Limits) -> None:
        """A new direction and the first trial step for each image in ``starting``."""
        states = self.states
        for i in starting:
            states[i].iterations += 1
        self.take_history(starting)
        direction = self.two_loop()
        first = [i for i in starting if states[i].iterations == 1]
        mask = torch.zeros(self.b, dtype=torch.bool, device=self.dev)
        mask[starting] = True
        self.d = torch.where(mask.unsqueeze(1), direction, self.d)
        if first:
            self.d[first] = -self.g[first]
        self.prev_g = torch.where(mask.unsqueeze(1), self.g, self.prev_g)
        stats = torch.stack([(self.g * self.d).sum(1), self.d.abs().amax(1), self.g.abs().sum(1)]).tolist()
        for i in starting:
            st = states[i]
            gtd, d_norm, g_sum = stats[0][i], stats[1][i], stats[2][i]
            if not gtd < 0:  # not a descent direction (a zero gradient: already optimal)
                st.phase, st.iterations = "done", st.iterations - 1
                continue
            t = min(1.0, 1.0 / g_sum) * limits.lr if st.iterations == 1 else limits.lr
            if limits.line_search:
                st.search = strong_wolfe(st.loss, gtd, t, d_norm)
                st.step = next(st.search)
            else:
                st.step = t
            st.phase = "search"

    def evaluate_trials(self, active: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each active image's trial point, its loss and gradient; the others' rows are left as
        they are and not evaluated."""
        x, dev = self.x, self.dev
        steps = torch.tensor([st.step if a else 0.0 for st, a in zip(self.states, active)], device=dev, dtype=x.dtype)
        trial = x + steps.unsqueeze(1) * self.d
        if all(active):
            f_new, g_new = self.evaluate(trial, None)
            return trial, f_new, g_new
        live = [i for i, a in enumerate(active) if a]
        index = torch.tensor(live, device=dev)
        f_live, g_live = self.evaluate(trial.index_select(0, index), live)
        f_new = torch.zeros(self.b, device=dev, dtype=f_live.dtype).index_copy(0, index, f_live.detach())
        g_new = torch.zeros_like(self.g).index_copy(0, index, g_live)
        return trial, f_new, g_new


def _advance(st: ImageState, value: float, gtd: float, limits: _Limits) -> bool:
    """One image's step after its trial point was evaluated (loss ``value``, derivative ``gtd``
    along its direction): True when the point becomes its iterate (an iteration is done)."""
    st.evaluations += 1
    if not math.isfinite(value):
        st.phase, st.error = "done", f"the loss became {value} at iteration {st.iterations}"
        return False
    if st.phase == "search" and st.search is not None:
        try:
            st.step = st.search.send((value, gtd))
            return False
        except StopIteration as stop:
            accepted = stop.value
        if accepted == 0.0:  # no decrease along d: stay (and stop, as torch does)
            st.accepted = 0.0
            st.phase = "done"
            return False
        if accepted != st.step:  # an earlier trial point: evaluate it again
            st.step, st.phase = accepted, "reeval"
            return False
    st.accepted = st.step
    st.loss = value
    if limits.tolerance > 0:
        st.recent = [*st.recent[-TOLERANCE_WINDOW:], value]
        old = st.recent[0]
        st.converged = len(st.recent) > TOLERANCE_WINDOW and old - value <= limits.tolerance * abs(old)
    done = st.iterations >= limits.iterations or st.evaluations >= limits.max_evaluations or st.converged
    st.phase = "done" if done else "new"
    return True
