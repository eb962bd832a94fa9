"""The interchange format of membership inference: samples x models signal matrices.

Every model (target, shadow or reference) is queried once on the candidate examples; the
result is a `SignalMatrix` whose entry (j, i) describes example j under model i, with a
boolean membership matrix of the same [N, M] shape. All attacks in this package are pure
functions over these matrices, so models are trained and scored once and then cached.

The stored signal is the logit-scaled confidence of the true label (Carlini et al. 2022)

    phi = log(p_y / (1 - p_y)) = z_y - logsumexp_{k != y} z_k,

computed from the logits without forming p (stable even when p_y rounds to 1). The other
per-example signals are exact functions of it: confidence p_y = sigmoid(phi) and
cross-entropy loss -log p_y = softplus(-phi). Multi-query attacks keep one phi per query
(augmentation) in a third dimension. Prediction vectors (for Shokri et al.) and the
correct/incorrect flag (for the gap attack) are kept for the first (clean) query.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bastion.core import Classifier, ConfigError, InputError, available_cores

AUGMENTATIONS = ("none", "flip", "shift", "flip+shift")


@dataclass
class SignalMatrix:
    """Signals of N examples under M models.

    Attributes:
        phi: float32 [N, M, Q]: logit-scaled true-label confidence per query.
        member: bool [N, M]: whether example j was in model i's training set.
        labels: int64 [N]: true labels.
        correct: bool [N, M]: model i predicts example j's label (clean query).
        probs: float32 [N, M, C] prediction vectors (clean query), or None.
    """

    phi: torch.Tensor
    member: torch.Tensor
    labels: torch.Tensor
    correct: torch.Tensor
    probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.phi.dim() == 2:
            self.phi = self.phi.unsqueeze(-1)
        if self.phi.dim() != 3:
            raise InputError(f"phi must be [N, M] or [N, M, Q], got {tuple(self.phi.shape)}")
        n, m, _ = self.phi.shape
        for name, t, shape in (("member", self.member, (n, m)), ("correct", self.correct, (n, m)),
                               ("labels", self.labels, (n,))):
            if tuple(t.shape) != shape:
                raise InputError(f"{name} must have shape {shape} to match phi {tuple(self.phi.shape)}, "
                                 f"got {tuple(t.shape)}")
        self.member = self.member.bool()
        self.correct = self.correct.bool()
        if self.probs is not None and tuple(self.probs.shape[:2]) != (n, m):
            raise InputError(f"probs must be [N, M, C] with N, M = {n}, {m}, got {tuple(self.probs.shape)}")

    @property
    def n(self) -> int:
        return int(self.phi.shape[0])

    @property
    def m(self) -> int:
        return int(self.phi.shape[1])

    @property
    def q(self) -> int:
        return int(self.phi.shape[2])

    @property
    def confidence(self) -> torch.Tensor:
        """True-label probability p_y, [N, M, Q]."""
        return torch.sigmoid(self.phi)

    @property
    def loss(self) -> torch.Tensor:
        """Cross-entropy loss -log p_y, [N, M, Q]."""
        return F.softplus(-self.phi)

    def models(self, idx: Sequence[int] | torch.Tensor | slice) -> SignalMatrix:
        """The sub-matrix of some models (columns)."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx, dtype=torch.long)
        return SignalMatrix(self.phi[:, idx], self.member[:, idx], self.labels, self.correct[:, idx],
                            None if self.probs is None else self.probs[:, idx])

    def samples(self, idx: Sequence[int] | torch.Tensor | slice) -> SignalMatrix:
        """The sub-matrix of some examples (rows)."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx, dtype=torch.long)
        return SignalMatrix(self.phi[idx], self.member[idx], self.labels[idx], self.correct[idx],
                            None if self.probs is None else self.probs[idx])

    def without(self, i: int) -> SignalMatrix:
        """All models except column i (leave-one-out evaluation)."""
        keep = [j for j in range(self.m) if j != i]
        return self.models(keep)

    def to(self, device: str | torch.device) -> SignalMatrix:
        return SignalMatrix(self.phi.to(device), self.member.to(device), self.labels.to(device),
                            self.correct.to(device), None if self.probs is None else self.probs.to(device))

    @staticmethod
    def concat(parts: Sequence[SignalMatrix]) -> SignalMatrix:
        """Join matrices over the same examples side by side (models axis)."""
        if not parts:
            raise ConfigError("nothing to concatenate")
        probs = None if any(p.probs is None for p in parts) else torch.cat([p.probs for p in parts], 1)  # type: ignore[misc]
        return SignalMatrix(torch.cat([p.phi for p in parts], 1), torch.cat([p.member for p in parts], 1),
                            parts[0].labels, torch.cat([p.correct for p in parts], 1), probs)

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        t = {"phi": self.phi, "member": self.member.to(torch.uint8), "labels": self.labels,
             "correct": self.correct.to(torch.uint8)}
        if self.probs is not None:
            t["probs"] = self.probs
        from bastion.fileio import atomic_path
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in t.items()}, str(tmp))
        return path

    @classmethod
    def load(cls, path: str | Path) -> SignalMatrix:
        from safetensors.torch import load_file
        t = load_file(str(path))
        return cls(t["phi"], t["member"].bool(), t["labels"], t["correct"].bool(), t.get("probs"))


# --------------------------------------------------------------------------- queries


def _shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate images [N, C, H, W] by (dx, dy) pixels, filling with the border value 0."""
    h, w = x.shape[-2:]
    p = max(abs(dx), abs(dy))
    padded = F.pad(x, (p, p, p, p))
    return padded[..., p - dy:p - dy + h, p - dx:p - dx + w]


def query_transforms(augment: str) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The queries of a multi-query attack: 'none' (the clean image only), 'flip'
    (+ horizontal mirror), 'shift' (+ four one-pixel translations), 'flip+shift' (both,
    10 queries). The clean query is always first."""
    if augment not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {augment!r}; valid: {', '.join(AUGMENTATIONS)}")
    shifts = [(0, 0)] + ([(1, 0), (-1, 0), (0, 1), (0, -1)] if "shift" in augment else [])
    flips = [False, True] if "flip" in augment else [False]
    out: list[Callable[[torch.Tensor], torch.Tensor]] = []
    for fl in flips:
        for dx, dy in shifts:
            def t(x: torch.Tensor, fl: bool = fl, dx: int = dx, dy: int = dy) -> torch.Tensor:
                if x.dim() != 4 and (fl or dx or dy):
                    raise InputError("flip/shift queries need image inputs [N, C, H, W]")
                z = x.flip(-1) if fl else x
                return _shift(z, dx, dy) if (dx or dy) else z
            out.append(t)
    return out


def logit_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """phi = z_y - logsumexp_{k != y} z_k for logits [..., C] and labels [...]."""
    zy = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, y.unsqueeze(-1), float("-inf"))
    return zy - torch.logsumexp(others, -1)


def _score_model(model: torch.nn.Module, i: int, x: torch.Tensor, y: torch.Tensor,
                 queries: list[Callable[[torch.Tensor], torch.Tensor]], batch_size: int,
                 phi: torch.Tensor, correct: torch.Tensor, probs: torch.Tensor | None) -> None:
    """Fill column i of phi / correct / probs with model i's signals."""
    n = int(x.shape[0])
    model.eval()
    dev = next(iter(model.parameters())).device
    # a Classifier scores in its fast layout (channels-last conv nets on CPU: 2.5x faster),
    # in cache-sized chunks on CPU (128: 1.2x faster than 1024 with a thread per model)
    bs = min(batch_size, 128) if dev.type == "cpu" else batch_size
    layout = model.fast_layout() if isinstance(model, Classifier) else contextlib.nullcontext()
    with layout, torch.no_grad():
        for s in range(0, n, bs):
            xb, yb = x[s:s + bs].to(dev), y[s:s + bs].to(dev)
            for qi, t in enumerate(queries):
                logits = model(t(xb)).float()
                phi[s:s + len(xb), i, qi] = logit_confidence(logits, yb).cpu()
                if qi == 0:
                    correct[s:s + len(xb), i] = (logits.argmax(-1) == yb).cpu()
                    if probs is not None:
                        probs[s:s + len(xb), i] = logits.softmax(-1).cpu()


def _num_classes(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model.eval()(x[:1].to(next(iter(model.parameters())).device)).shape[-1])


def compute_signals(models: Sequence[torch.nn.Module], x: torch.Tensor, y: torch.Tensor,
                    member: torch.Tensor | None = None, augment: str = "none", batch_size: int = 1024,
                    keep_probs: bool = True, workers: int | None = None) -> SignalMatrix:
    """Query every model on every example (and augmentation) once.

    Args:
        models: classifiers (each is queried on its own device, inputs in its bounds).
        x, y: candidate examples and labels.
        member: bool [N, M] membership of each example in each model's training set
            (None = unknown, stored as all False; evaluation then needs labels from elsewhere).
        augment: multi-query augmentation, see `query_transforms`.
        batch_size: examples per forward pass.
        keep_probs: also keep the clean prediction vectors (needed by Shokri's attack).
        workers: CPU models scored at once, each on one thread (None: one per core when
            there are several CPU models; small models scale far better this way than with
            intra-op threads). GPU models are always scored one after another.
    """
    if len(models) == 0:
        raise ConfigError("compute_signals needs at least one model")
    if x.shape[0] != y.shape[0]:
        raise InputError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
    n, m = int(x.shape[0]), len(models)
    if member is None:
        member = torch.zeros(n, m, dtype=torch.bool)
    if tuple(member.shape) != (n, m):
        raise InputError(f"membership matrix must be [{n}, {m}] (examples x models), got {tuple(member.shape)}")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    queries = query_transforms(augment)
    y = y.long()
    phi = torch.empty(n, m, len(queries))
    correct = torch.empty(n, m, dtype=torch.bool)
    probs = torch.empty(n, m, _num_classes(models[0], x)) if keep_probs else None
    on_cpu = all(next(iter(mod.parameters())).device.type == "cpu" for mod in models)
    k = min(workers if workers is not None else available_cores(), m) if on_cpu else 1
    if k <= 1:
        for i, model in enumerate(models):
            _score_model(model, i, x, y, queries, batch_size, phi, correct, probs)
    else:
        # one Python thread per core, each running single-threaded kernels (they release the GIL)
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(k) as pool:
                list(pool.map(lambda i: _score_model(models[i], i, x, y, queries, batch_size, phi,
                                                     correct, probs), range(m)))
        finally:
            torch.set_num_threads(old)
    return SignalMatrix(phi, member.bool().cpu(), y.cpu(), correct, probs)
