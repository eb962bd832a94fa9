"""`Ensemble`: a team of classifiers with one consensus rule, itself a `Classifier`, so
every attack runs against it.

Members' forwards are batched: each member sees the whole batch in one call, and on a GPU
members that share an architecture are evaluated in one vectorised call
(`torch.func.stack_module_state` + `torch.vmap`). On CPU the vmap of convolutions measured
1.5-2.2x slower than one call per member (cnn-small, 1 thread), so there the members run
one after the other unless `vectorize=True` forces the vmap. `forward(x)` returns log of the consensus distribution, whose
argmax is the ensemble's label. For the soft vote this is the log-mean-probability
classifier and differentiable end to end: the white-box attack on the whole ensemble. The
plurality vote is piecewise constant, so gradient attacks should target `adaptive()`, the
soft-vote (mean probability) or mean-logit surrogate of the same members.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bastion.core import Classifier, ConfigError, require
from bastion.defenses.ensemble.consensus import METHODS, check_method, combine

SURROGATES = ("soft", "mean-logit")


def check_members(members: Sequence[Classifier], what: str = "ensemble") -> None:
    """Members must be Classifiers on one input domain with one set of classes."""
    require(len(members) >= 1, f"{what}: needs at least one member")
    for m in members:
        if not isinstance(m, Classifier):
            raise ConfigError(f"{what}: members must be bastion Classifiers, got {type(m).__name__}")
    first = members[0]
    for m in members[1:]:
        require(m.spec.shape == first.spec.shape and m.spec.bounds == first.spec.bounds,
                f"{what}: member {m.name} takes inputs {m.spec.shape} in {m.spec.bounds}, member "
                f"{first.name} takes {first.spec.shape} in {first.spec.bounds}")
        require(m.num_classes == first.num_classes,
                f"{what}: member {m.name} has {m.num_classes} classes, member {first.name} "
                f"{first.num_classes}")


def _signature(m: Classifier) -> tuple[Any, ...]:
    """Members with equal signatures have the same parameter layout and can be stacked."""
    state = m.state_dict()
    return (type(m.module).__name__, tuple((k, tuple(v.shape), v.dtype) for k, v in state.items()),
            repr(m.module))


class StackedMembers(nn.Module):
    """Evaluates a list of classifiers on one batch: [M, N, C] logits.

    Groups of members with identical architecture run as one `torch.vmap` over their
    stacked weights (`torch.func.stack_module_state`) when `vectorize` is True, or None
    (auto) and the members are on a GPU; otherwise one call per member. The stacked copies
    are rebuilt when the members move to another device; call `refresh()` after changing
    members' weights in place.
    """

    def __init__(self, members: Sequence[Classifier], vectorize: bool | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.vectorize = vectorize
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, m in enumerate(members):
            groups.setdefault(_signature(m) if vectorize is not False else (i,), []).append(i)
        self.groups = list(groups.values())
        self._stacks: dict[int, tuple[Any, Any, nn.Module]] = {}
        self._stack_device: torch.device | None = None

    def refresh(self) -> None:
        self._stacks = {}
        self._stack_device = None

    def _stack(self, gi: int) -> tuple[Any, Any, nn.Module]:
        dev = self.members[0].device
        if self._stack_device != dev:
            self._stacks, self._stack_device = {}, dev
        if gi not in self._stacks:
            from torch.func import stack_module_state

            mods = [self.members[i] for i in self.groups[gi]]
            params, buffers = stack_module_state(mods)  # type: ignore[arg-type]
            base = copy.deepcopy(mods[0]).to("meta")
            self._stacks[gi] = (params, buffers, base)
        return self._stacks[gi]

    @property
    def uses_vmap(self) -> bool:
        return bool(self.vectorize) or (self.vectorize is None and self.members[0].device.type == "cuda")

    def forward(self, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """[M, N, C] logits. `chunk`: without the vmap, feed each member at most this many
        inputs per call (on CPU a 100-image batch ran faster per image than 400 at once)."""
        if not self.uses_vmap:
            if chunk is None or chunk >= x.shape[0]:
                return torch.stack([m(x) for m in self.members])
            return torch.stack([torch.cat([m(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])
                                for m in self.members])
        out: list[torch.Tensor | None] = [None] * len(self.members)
        for gi, idx in enumerate(self.groups):
            if len(idx) == 1:
                out[idx[0]] = self.members[idx[0]](x)
                continue
            from torch.func import functional_call

            params, buffers, base = self._stack(gi)

            def one(p: Any, b: Any, inp: torch.Tensor, base: nn.Module = base) -> torch.Tensor:
                return functional_call(base, (p, b), (inp,))

            logits = torch.vmap(one, in_dims=(0, 0, None))(params, buffers, x)
            for j, i in enumerate(idx):
                out[i] = logits[j]
        return torch.stack(out)  # type: ignore[arg-type]


class Ensemble(Classifier):
    """A team of classifiers combined by a consensus rule (`bastion.defenses.ensemble.
    consensus`).

    Args:
        members: Classifiers on one input domain with one set of classes.
        consensus: 'soft' (mean probability, default), 'plurality', 'weighted-soft' or
            'weighted-plurality'.
        weights: one non-negative weight per member (weighted rules).
        vectorize: stack members that share an architecture into one vmap call (True),
            never (False), or on a GPU only (None, default).
        name: a label for reports.
    """

    def __init__(self, members: Sequence[Classifier], consensus: str = "soft",
                 weights: Sequence[float] | None = None, vectorize: bool | None = None,
                 name: str = "ensemble") -> None:
        members = list(members)
        check_members(members)
        check_method(consensus, weights, len(members))
        first = members[0]
        super().__init__(StackedMembers(members, vectorize), first.spec, first.num_classes,
                         device=first.device, name=name,
                         meta={"defense": {"kind": "ensemble", "consensus": consensus,
                                           "members": [m.name for m in members]}})
        self.normalize = nn.Identity()
        self.consensus = consensus
        self.weights = None if weights is None else [float(w) for w in weights]

    @property
    def members(self) -> list[Classifier]:
        return list(self.module.members)  # type: ignore[union-attr,arg-type]

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """[M, N, C] logits of every member (with gradients when enabled)."""
        return self.module(x)

    def member_probs(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """[M, N, C] probabilities of every member, batched, without gradients."""
        outs = []
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                outs.append(self.member_logits(x[i:i + batch_size].to(self.device)).softmax(-1))
        if not outs:
            return torch.empty(len(self.members), 0, self.num_classes, device=self.device)
        return torch.cat(outs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.member_logits(x).softmax(-1)
        return combine(p, self.consensus, self.weights).clamp_min(1e-12).log()

    def adaptive(self, surrogate: str = "soft") -> Classifier:
        """The white-box surrogate of the whole ensemble: 'soft' (log of the mean
        probability) or 'mean-logit'. A soft-vote ensemble is its own surrogate."""
        if surrogate not in SURROGATES:
            raise ConfigError(f"unknown ensemble surrogate {surrogate!r}; valid: {', '.join(SURROGATES)}")
        if surrogate == "soft" and self.consensus == "soft":
            return self
        return _Surrogate(self, surrogate)


class _Surrogate(Classifier):
    """Mean-probability or mean-logit classifier over an ensemble's members."""

    def __init__(self, ens: Ensemble, how: str) -> None:
        super().__init__(ens.module, ens.spec, ens.num_classes, device=ens.device,
                         name=f"{how}({ens.name})")
        self.normalize = nn.Identity()
        self.how = how

    @property
    def device(self) -> torch.device:
        return self.module.members[0].device  # type: ignore[union-attr,index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.module(x)
        if self.how == "mean-logit":
            return z.mean(0)
        return z.softmax(-1).mean(0).clamp_min(1e-12).log()


__all__ = ["METHODS", "Ensemble", "StackedMembers", "check_members"]
