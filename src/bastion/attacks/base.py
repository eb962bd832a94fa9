"""The evasion-attack contract: `attack(model, x, y, target=None) -> AttackResult`.

An attack is a dataclass whose fields are its parameters (defaults from the source
paper). Subclasses implement `_run`, which receives validated inputs already on the
model's device and returns the adversarial batch; `__call__` does validation, timing,
predictions, success and the result object, so every attack behaves the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch

from bastion.core import AttackResult, Classifier, ConfigError, InputError, check_labels

FIXED_BUDGET = "fixed-budget"
MINIMUM_NORM = "minimum-norm"


@dataclass
class RunOutput:
    """What `_run` hands back: the adversarial batch plus optional per-example queries
    and attack-specific extras."""

    x_adv: torch.Tensor
    queries: torch.Tensor | None = None
    extras: dict[str, Any] | None = None


def run_in_batches(n: int, batch_size: int,
                   fn: Callable[[slice], tuple[torch.Tensor, torch.Tensor]]) -> RunOutput:
    """Call `fn` on consecutive slices of `batch_size` examples (out of `n`) and join the
    (x_adv, queries) pairs it returns into one RunOutput."""
    outs, qs = [], []
    for i in range(0, n, batch_size):
        a, q = fn(slice(i, i + batch_size))
        outs.append(a)
        qs.append(q)
    return RunOutput(torch.cat(outs), torch.cat(qs))


def join_batches(batches: Iterable[Any], shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) batches of an iterable (e.g. a torch DataLoader) joined into one (x, y),
    each batch checked against the model's per-example `shape` first."""
    if isinstance(batches, (str, bytes)) or not isinstance(batches, Iterable):
        raise InputError(f"x must be a tensor or an iterable of (x, y) batches, got "
                         f"{type(batches).__name__}")
    want = f"[B, {', '.join(map(str, shape))}]"
    xs, ys = [], []
    for i, batch in enumerate(batches):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2
                and all(isinstance(t, torch.Tensor) for t in batch)):
            raise InputError(f"data loader batch {i}: expected a pair (x, y) of tensors, got "
                             f"{type(batch).__name__}")
        bx, by = batch
        if tuple(bx.shape[1:]) != tuple(shape) or by.dim() != 1 or by.shape[0] != bx.shape[0]:
            raise InputError(f"data loader batch {i}: expected x of shape {want} and y of shape [B], "
                             f"got x {list(bx.shape)} and y {list(by.shape)}")
        xs.append(bx.detach())
        ys.append(by)
    if not xs:
        raise InputError("the data loader yielded no batches")
    return torch.cat(xs), torch.cat(ys)


def check_probabilities(model: Classifier, x: torch.Tensor) -> None:
    """Refuse a model whose outputs already look like probabilities: losses and margins
    computed on them are wrong (a classic silent failure of peer libraries)."""
    with torch.no_grad():
        out = model(x[: min(8, x.shape[0])])
    if out.numel() and bool((out >= 0).all()) and bool((out <= 1).all()):
        if torch.allclose(out.sum(-1), torch.ones(out.shape[0], device=out.device), atol=1e-4):
            raise InputError("the model returns probabilities (rows in [0, 1] summing to 1); "
                             "attacks need logits: remove the final softmax")


@contextmanager
def default_layout(model: Classifier) -> Iterator[None]:
    """Run the passes inside in the model's own (default, contiguous) memory layout, even
    when an enclosing `fast_layout` is active (an attack called by an ensemble). Logits in
    channels-last differ by float rounding (about 1e-6), which flips the label of an example
    a minimum-norm attack leaves on the boundary; success is therefore judged here."""
    if not getattr(model, "_channels_last", False):
        yield
        return
    model.module.to(memory_format=torch.contiguous_format)
    model._channels_last = False
    try:
        yield
    finally:
        model.module.to(memory_format=torch.channels_last)
        model._channels_last = True


def own_predictions(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """The model's own forward-pass labels for `x`, in its default layout."""
    with default_layout(model):
        return model.predict(x.contiguous())


# Relative growths of a perturbation tried, smallest first, when a minimum-norm attack's
# boundary point lands on the wrong side under the model's own layout (at most +0.1%).
BOUNDARY_NUDGES = (2.0 ** -20, 2.0 ** -16, 2.0 ** -13, 2.0 ** -10)


def _push_across_boundary(model: Classifier, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                          target: torch.Tensor | None, pred_adv: torch.Tensor,
                          bounds: tuple[float, float]) -> int:
    """Minimum-norm attacks stop on the decision boundary, where logit margins of ~1e-7 can
    flip between memory layouts. For each example the attack moved but the model's own
    forward pass does not call adversarial, grow its perturbation by at most 0.1% until it
    does. Updates `x_adv` and `pred_adv` in place; returns how many examples moved."""
    def hit(p: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return p == target[rows] if target is not None else p != y[rows]

    moved = (x_adv != x).flatten(1).any(1)
    todo = torch.nonzero(moved & ~hit(pred_adv, torch.arange(len(y), device=y.device))).flatten()
    pushed = 0
    for nudge in BOUNDARY_NUDGES:
        if todo.numel() == 0:
            break
        cand = (x[todo] + (1 + nudge) * (x_adv[todo] - x[todo])).clamp(*bounds)
        pred = own_predictions(model, cand)
        ok = hit(pred, todo)
        rows = todo[ok]
        x_adv[rows], pred_adv[rows] = cand[ok], pred[ok]
        pushed += int(ok.sum())
        todo = todo[~ok]
    return pushed


@dataclass
class Attack:
    """Base class of evasion attacks. Class attributes describe the attack for the
    registry and the CLI: `name`, `kind` (fixed-budget or minimum-norm), `norms`,
    `supports_targeted`, `black_box` (needs no gradients)."""

    name: ClassVar[str] = "attack"
    kind: ClassVar[str] = FIXED_BUDGET
    norms: ClassVar[tuple[str, ...]] = ("linf",)
    supports_targeted: ClassVar[bool] = True
    black_box: ClassVar[bool] = False

    def validate(self) -> None:
        """Check parameters; subclasses extend. Called before any work."""
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("eps", "steps", "alpha", "step_size", "max_iter", "restarts",
                          "max_queries") and isinstance(v, (int, float)) and not isinstance(v, bool):
                if v < 0 or v != v:
                    raise ConfigError(f"{self.name}: {f.name} must be non-negative, got {v}")

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def __call__(self, model: Classifier, x: torch.Tensor | Iterable[Any],
                 y: torch.Tensor | None = None,
                 target: torch.Tensor | None = None) -> AttackResult:
        """Attack the batch (x, y), or every (x, y) batch of an iterable such as a torch
        DataLoader (`attack(model, loader)`): its batches are joined into one input, so the
        result is the one the tensor call on the same data gives."""
        self.validate()
        if not isinstance(model, Classifier):
            raise InputError("attacks take a bastion Classifier; wrap your module with "
                             "bastion.Classifier(module, InputSpec(...), num_classes)")
        if not isinstance(x, torch.Tensor):
            if y is not None or target is not None:
                raise InputError("with a data loader, pass attack(model, loader): the labels come "
                                 "from its (x, y) batches")
            x, y = join_batches(x, model.spec.shape)
        elif y is None:
            raise InputError("labels y are required: attack(model, x, y) or attack(model, loader)")
        model.check(x, y)
        if target is not None:
            if not self.supports_targeted:
                raise ConfigError(f"{self.name} is untargeted only")
            check_labels(target, model.num_classes, x.shape[0], name="target")
            if bool((target.cpu() == y.cpu()).any()):
                raise InputError("target labels must differ from the true labels")
        dev = model.device
        x = x.detach().to(dev, torch.float32)
        y = y.to(dev, torch.long)
        target = None if target is None else target.to(dev, torch.long)
        if x.shape[0] == 0:
            raise InputError("empty input batch")
        check_probabilities(model, x)
        was_training = model.training
        model.eval()
        lo, hi = model.spec.bounds
        try:
            with model.fast_layout():
                self.__dict__["_call_inputs"] = (model, x)
                start = time.perf_counter()
                out = self._run(model, x, y, target)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                wall = time.perf_counter() - start
                x_adv = out.x_adv.detach().clamp(lo, hi).contiguous()
            # Success is decided by the model's own forward pass on the returned batch, in
            # its own layout: never by the attack's internal (fast-layout) logits.
            pred_clean = own_predictions(model, x)
            pred_adv = own_predictions(model, x_adv)
            pushed = (_push_across_boundary(model, x, x_adv, y, target, pred_adv, (lo, hi))
                      if self.kind == MINIMUM_NORM else 0)
        finally:
            self.__dict__.pop("_call_inputs", None)
            self.__dict__.pop("_pred_clean", None)
            model.train(was_training)
        success = pred_adv == target if target is not None else pred_adv != y
        return AttackResult(x=x, x_adv=x_adv, y=y, success=success, pred_clean=pred_clean,
                            pred_adv=pred_adv, target=target, queries=out.queries, wall_time=wall,
                            attack=self.name, params=self.params(),
                            extras={**(out.extras or {}), **({"boundary_pushed": pushed} if pushed else {})})

    def _run(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
             target: torch.Tensor | None) -> RunOutput:
        raise NotImplementedError

    def clean_predictions(self) -> torch.Tensor | None:
        """The model's predictions on the clean inputs of the call in progress, or None
        outside a call. Computed once per call, on first use: the result needs them, so an
        attack that also needs them gets them without another forward pass."""
        if "_pred_clean" not in self.__dict__:
            if "_call_inputs" not in self.__dict__:
                return None
            model, x = self.__dict__["_call_inputs"]
            self.__dict__["_pred_clean"] = model.predict(x)
        return self.__dict__["_pred_clean"]
