"""Byzantine-robust aggregation rules (beside the coordinate-wise median and trimmed mean
of aggregators.py). Each works on the round's updates flattened to one matrix [n, d].

- Krum / Multi-Krum (Blanchard et al., 2017): score_i = sum of the squared distances to
  its n - f - 2 nearest other updates; Krum returns the lowest-scoring update, Multi-Krum
  the mean of the m lowest. Needs n > 2f + 2. Pairwise distances are one Gram-matrix product.
- Bulyan (El Mhamdi et al., 2018): pick theta = n - 2f updates by repeated Krum, then per
  coordinate average the beta = theta - 2f values closest to the coordinate median.
  Needs n >= 4f + 3.
- Norm clipping with optional weak DP (Sun et al., 2019): clip every update to L2 norm
  <= M (M fixed, or the round's median norm), average, add N(0, sigma^2) noise.
- FLTrust (Cao et al., 2021): the server trains on a small clean root set to get g0;
  client i gets trust ReLU(cos(g_i, g0)), is rescaled to ||g0|| and the aggregate is the
  trust-weighted mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bastion.core import ConfigError
from bastion.federated.aggregators import Aggregator, ClientUpdate, Tensors, _check, fedavg

# --------------------------------------------------------------------------- flattening


def flatten(updates: Sequence[ClientUpdate]) -> tuple[torch.Tensor, list[str], list[torch.Size]]:
    """Stack the updates as rows of an [n, d] float32 matrix; names and shapes to undo it."""
    names = _check(updates)
    shapes = [updates[0].delta[k].shape for k in names]
    mat = torch.stack([torch.cat([u.delta[k].reshape(-1).float() for k in names]) for u in updates])
    return mat, names, shapes


def unflatten(vec: torch.Tensor, names: list[str], shapes: list[torch.Size]) -> Tensors:
    out, i = {}, 0
    for k, s in zip(names, shapes, strict=True):
        n = s.numel()
        out[k] = vec[i:i + n].reshape(s)
        i += n
    return out


# --------------------------------------------------------------------------- constraints


def check_krum(n: int, f: int) -> None:
    """Krum's resilience condition n > 2f + 2 (Blanchard et al., 2017)."""
    if f < 0:
        raise ConfigError(f"Krum's f (Byzantine clients tolerated) must be >= 0, got {f}")
    if not n > 2 * f + 2:
        raise ConfigError(f"Krum needs n > 2f + 2: {n} updates cannot tolerate f={f} "
                          f"(at most f={(n - 3) // 2} for n={n})")


def check_bulyan(n: int, f: int) -> None:
    """Bulyan's condition n >= 4f + 3 (El Mhamdi et al., 2018)."""
    if f < 0:
        raise ConfigError(f"Bulyan's f (Byzantine clients tolerated) must be >= 0, got {f}")
    if not n >= 4 * f + 3:
        raise ConfigError(f"Bulyan needs n >= 4f + 3: {n} updates cannot tolerate f={f} "
                          f"(at most f={(n - 3) // 4} for n={n})")


# --------------------------------------------------------------------------- Krum


def pairwise_sq_distances(mat: torch.Tensor) -> torch.Tensor:
    """[n, n] squared Euclidean distances between the rows, vectorised as one Gram matrix
    product: ||a||^2 + ||b||^2 - 2 a.b (float32, clamped at 0). This is the formula of
    `torch.cdist`'s matrix-product mode; computed directly it was 2.6x faster than
    cdist itself for 100 x 312,202 on one CPU thread (cdist builds augmented copies)."""
    m = mat.float()
    sq = (m * m).sum(1)
    d = (sq[:, None] + sq[None, :] - 2.0 * (m @ m.T)).clamp_min_(0.0)
    d.fill_diagonal_(0.0)
    return d


def krum_scores(mat: torch.Tensor, f: int, dist: torch.Tensor | None = None) -> torch.Tensor:
    """score_i = sum of squared distances to the n - f - 2 closest other rows."""
    n = mat.shape[0]
    check_krum(n, f)
    d2 = pairwise_sq_distances(mat) if dist is None else dist
    d2 = d2 + torch.diag(torch.full((n,), float("inf"), dtype=d2.dtype, device=d2.device))
    k = n - f - 2
    return d2.topk(k, dim=1, largest=False).values.sum(1)


class Krum:
    """Krum (m=1) or Multi-Krum (m > 1): mean of the m updates with the lowest Krum score.
    `last_selected` holds the chosen client ids of the last call."""

    def __init__(self, f: int = 1, m: int = 1) -> None:
        if f < 0:
            raise ConfigError(f"Krum's f must be >= 0, got {f}")
        if m < 1:
            raise ConfigError(f"Multi-Krum's m must be >= 1, got {m}")
        self.f, self.m = f, m
        self.last_selected: list[int] = []
        self.history: list[dict[str, Any]] = []

    def __call__(self, updates: Sequence[ClientUpdate]) -> Tensors:
        mat, names, shapes = flatten(updates)
        n = mat.shape[0]
        check_krum(n, self.f)
        if self.m > n - self.f:
            raise ConfigError(f"Multi-Krum's m must be <= n - f = {n - self.f}, got {self.m}")
        scores = krum_scores(mat, self.f)
        pick = scores.argsort()[: self.m]
        self.last_selected = [updates[int(i)].client for i in pick]
        self.history.append({"round": updates[0].round, "selected": self.last_selected})
        return unflatten(mat[pick].mean(0), names, shapes)


def krum(f: int = 1) -> Krum:
    """Krum (Blanchard et al., 2017) tolerating f Byzantine clients."""
    return Krum(f, 1)


def multi_krum(f: int = 1, m: int | None = None) -> Krum:
    """Multi-Krum: mean of the m best-scoring updates (m=None: m = n - f at each call)."""
    return _MultiKrumAuto(f) if m is None else Krum(f, m)


class _MultiKrumAuto(Krum):
    """Multi-Krum with m = n - f (all but the f suspected updates)."""

    def __call__(self, updates: Sequence[ClientUpdate]) -> Tensors:
        self.m = max(1, len(updates) - self.f)
        return super().__call__(updates)


# --------------------------------------------------------------------------- Bulyan


class Bulyan:
    """Bulyan (El Mhamdi et al., 2018) over Krum, tolerating f Byzantine clients."""

    def __init__(self, f: int = 1) -> None:
        if f < 0:
            raise ConfigError(f"Bulyan's f must be >= 0, got {f}")
        self.f = f
        self.last_selected: list[int] = []

    def __call__(self, updates: Sequence[ClientUpdate]) -> Tensors:
        mat, names, shapes = flatten(updates)
        n, f = mat.shape[0], self.f
        check_bulyan(n, f)
        theta = n - 2 * f
        full = pairwise_sq_distances(mat)
        remaining = list(range(n))
        chosen: list[int] = []
        for _ in range(theta):
            idx = torch.tensor(remaining)
            sub = full[idx][:, idx]
            r = len(remaining)
            # Krum on the remaining set; its n - f - 2 neighbours, never fewer than one
            k = max(1, r - f - 2)
            d2 = sub + torch.diag(torch.full((r,), float("inf"), dtype=sub.dtype))
            scores = d2.topk(min(k, r - 1), dim=1, largest=False).values.sum(1) if r > 1 else torch.zeros(1)
            best = remaining[int(scores.argmin())]
            chosen.append(best)
            remaining.remove(best)
        sel = mat[torch.tensor(chosen)]                          # [theta, d]
        beta = theta - 2 * f
        med = sel.median(0).values
        closest = (sel - med).abs().topk(beta, dim=0, largest=False).indices  # [beta, d]
        agg = sel.gather(0, closest).mean(0)
        self.last_selected = [updates[i].client for i in chosen]
        return unflatten(agg, names, shapes)


def bulyan(f: int = 1) -> Bulyan:
    return Bulyan(f)


# --------------------------------------------------------------------------- norm clipping


class NormClip:
    """Clip each update to L2 norm <= bound (None: the round's median update norm), take
    the example-weighted mean, add N(0, noise_std^2) per coordinate (weak DP, Sun et al.,
    2019; noise_std = 0 turns it off)."""

    def __init__(self, bound: float | None = None, noise_std: float = 0.0, seed: int = 0) -> None:
        if bound is not None and not bound > 0:
            raise ConfigError(f"norm-clip bound must be positive (or None for the median norm), got {bound}")
        if not noise_std >= 0:
            raise ConfigError(f"norm-clip noise_std must be >= 0, got {noise_std}")
        self.bound, self.noise_std = bound, noise_std
        self.gen = torch.Generator().manual_seed(seed)
        self.last_bound: float | None = None

    def __call__(self, updates: Sequence[ClientUpdate]) -> Tensors:
        mat, names, shapes = flatten(updates)
        norms = mat.norm(dim=1)
        bound = float(norms.median()) if self.bound is None else self.bound
        self.last_bound = bound
        scale = torch.clamp(bound / norms.clamp_min(1e-12), max=1.0)
        w = torch.tensor([float(u.num_examples) for u in updates])
        w = w / w.sum()
        agg = (w[:, None] * scale[:, None] * mat).sum(0)
        if self.noise_std > 0:
            agg = agg + self.noise_std * torch.randn(agg.shape, generator=self.gen)
        return unflatten(agg, names, shapes)


def norm_clip(bound: float | None = None, noise_std: float = 0.0, seed: int = 0) -> NormClip:
    return NormClip(bound, noise_std, seed)


# --------------------------------------------------------------------------- FLTrust


class FLTrust:
    """FLTrust (Cao et al., 2021): trust-weighted, magnitude-normalised aggregation against
    the server's own update on a clean root set.

    The server keeps its own copy of the global weights (starting from `model`'s and
    advanced by every aggregate it returns, exactly as `run_fedavg` does), so it can be
    passed as a plain aggregator. A call whose round is not after the last one restarts
    from `model`'s weights (a new run).

    Args:
        model: the global model (architecture and initial weights).
        root: a small clean data set held by the server (Cao et al. use ~100 examples).
        lr, steps, batch_size: the server's local SGD on the root set (match the clients').
        seed: seeds the root-set minibatches.
    """

    def __init__(self, model: Any, root: Any, lr: float = 0.1, steps: int | None = None,
                 batch_size: int = 32, epochs: int = 1, seed: int = 0) -> None:
        if len(root) < 1:
            raise ConfigError("FLTrust needs a non-empty root data set")
        if tuple(root.input_shape) != tuple(model.spec.shape):
            raise ConfigError(f"FLTrust root data shape {root.input_shape} does not match the model's "
                              f"{model.spec.shape}")
        self.model, self.root = model, root
        self.lr, self.steps, self.batch_size, self.epochs, self.seed = lr, steps, batch_size, epochs, seed
        self._weights: Tensors | None = None
        self._round = -1
        self.trust: list[dict[str, Any]] = []

    def _initial(self) -> Tensors:
        return {k: v.detach().clone() for k, v in self.model.named_parameters() if v.requires_grad}

    def server_update(self, weights: Tensors, round: int) -> Tensors:
        from bastion.federated.simulation import FedConfig, local_train

        cfg = FedConfig(local_lr=self.lr, local_steps=self.steps, local_batch_size=self.batch_size,
                        local_epochs=self.epochs)
        gen = torch.Generator().manual_seed(self.seed * 7919 + round)
        dev = self.model.device
        w, _, _ = local_train(self.model, weights, self.root.x.to(dev), self.root.y.to(dev), cfg, gen,
                              round, -1, None, ())
        return {k: w[k] - weights[k] for k in weights}

    def __call__(self, updates: Sequence[ClientUpdate]) -> Tensors:
        rnd = updates[0].round if updates else 0
        if self._weights is None or rnd <= self._round:
            self._weights = self._initial()
        self._round = rnd
        mat, names, shapes = flatten(updates)
        g0_t = self.server_update(self._weights, rnd)
        g0 = torch.cat([g0_t[k].reshape(-1).float() for k in names]).to(mat.device)
        g0n = g0.norm().clamp_min(1e-12)
        norms = mat.norm(dim=1).clamp_min(1e-12)
        ts = torch.relu(mat @ g0 / (norms * g0n))
        if float(ts.sum()) <= 0:
            agg = torch.zeros_like(g0)
        else:
            agg = ((ts * g0n / norms)[:, None] * mat).sum(0) / ts.sum()
        self.trust.append({"round": rnd, "trust": {u.client: float(t) for u, t in zip(updates, ts, strict=True)}})
        out = unflatten(agg, names, shapes)
        self._weights = {k: self._weights[k] + out[k].to(self._weights[k].dtype) for k in self._weights}
        return out


def fltrust(model: Any, root: Any, **kwargs: Any) -> FLTrust:
    return FLTrust(model, root, **kwargs)


ROBUST: dict[str, Any] = {"krum": krum, "multi-krum": multi_krum, "bulyan": bulyan, "norm-clip": norm_clip,
                          "fltrust": fltrust}

__all__ = [
    "Aggregator",
    "Bulyan",
    "FLTrust",
    "Krum",
    "NormClip",
    "bulyan",
    "check_bulyan",
    "check_krum",
    "fedavg",
    "flatten",
    "fltrust",
    "krum",
    "krum_scores",
    "multi_krum",
    "norm_clip",
    "pairwise_sq_distances",
    "unflatten",
]


def _register() -> None:
    from bastion.federated.aggregators import AGGREGATORS, FACTORIES

    AGGREGATORS.update(ROBUST)
    FACTORIES.update(ROBUST)


_register()
