"""Per-example gradient engines shared by DP-SGD, the PrivacyEngine, Fed-CDP and the
gradient-leakage experiments.

An engine turns one batch into a `PerExample`: the squared per-example gradient norms of
every parameterised layer and a function giving the weighted (clipped) per-example
gradient sums, without materialising per-example gradients where it can avoid it.

- ``ghost`` (default when every parameterised layer is Linear, Conv1d/2d, GroupNorm or
  LayerNorm): one forward pass with hooks, one backward pass for the *activation*
  gradients only (no weight gradients), then per layer the per-example gradient norms --
  the ghost-norm identity ||g a^T||^2 = ||g||^2 ||a||^2 for dense layers (Goodfellow 2015),
  a Gram-matrix or a materialised per-example product for convolutions, whichever is
  cheaper -- and the clipped sum as one weighted matrix product per layer.
- ``vmap``: torch.func per-example gradients (any layer without batch statistics).
- ``opacus``: Opacus's grad-sample hooks (optional dependency; for comparison).

`per_example_gradients(model, weights, x, y)` is the functional form (vmap over a dict of
weights, not the module's own parameters) used by the federated simulation's local SGD and
leakage taps. BatchNorm mixes the examples of a batch, so per-example gradients are
undefined under it: `check_dp_model` refuses such models or swaps in GroupNorm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from bastion.core import Classifier, ConfigError, unknown_name

Tensors = dict[str, torch.Tensor]
ENGINES: tuple[str, ...] = ("auto", "ghost", "vmap", "opacus")
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


# --------------------------------------------------------------------------- model checks


def find_batchnorm(module: nn.Module) -> list[str]:
    return [name or type(m).__name__ for name, m in module.named_modules() if isinstance(m, _BN_TYPES)]


def _groups_for(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0 and g <= ch:
            return g
    return 1


def replace_batchnorm(module: nn.Module) -> int:
    """Replace every BatchNorm layer of `module` in place by GroupNorm(min(8, C), C) (a
    divisor of C); returns how many were replaced. The weights are re-initialised."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, _BN_TYPES):
            ch = child.num_features
            gn = nn.GroupNorm(_groups_for(ch), ch, affine=child.affine)
            p = next(child.parameters(), None)
            if p is not None:
                gn.to(p.device)
            setattr(module, name, gn)
            count += 1
        else:
            count += replace_batchnorm(child)
    return count


def check_dp_model(clf: Classifier, fix: bool = False) -> None:
    """Refuse models whose layers mix examples of a batch (BatchNorm), or convert them."""
    bns = find_batchnorm(clf.module)
    if not bns:
        return
    if fix:
        replace_batchnorm(clf.module)
        clf.meta.setdefault("arch_args", {})
        if clf.meta.get("arch") == "resnet":
            clf.meta["arch_args"] = {**clf.meta["arch_args"], "norm": "group"}
        return
    raise ConfigError(
        f"DP-SGD cannot train a model with BatchNorm ({', '.join(bns[:3])}"
        f"{', ...' if len(bns) > 3 else ''}): batch normalisation mixes the examples of a batch, "
        "so per-example gradients (and hence clipping and the privacy guarantee) are undefined, and "
        "its running statistics leak the data unprotected. Use GroupNorm instead (e.g. "
        "`--arg norm=group` for resnet) or pass fix_batchnorm=True to replace it.")


# --------------------------------------------------------------------------- engines


@dataclass
class PerExample:
    """Per-example gradient information of one batch.

    norms_sq: [B, M] squared per-example gradient norms of each of the M layer groups.
    weighted_sum: w [B, M] -> per-parameter sums  sum_i w[i, m(p)] g_i(p)  (clipped sums).
    per_sample: optional callable returning materialised per-example gradients [B, *p.shape].
    """

    norms_sq: torch.Tensor
    weighted_sum: Callable[[torch.Tensor], list[torch.Tensor]]
    per_sample: Callable[[], list[torch.Tensor]] | None = None


class _Engine:
    params: list[nn.Parameter]
    group_of: list[int]
    num_groups: int

    def compute(self, clf: Classifier, x: torch.Tensor, y: torch.Tensor) -> PerExample:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _from_per_sample(self, per: list[torch.Tensor], x: torch.Tensor) -> PerExample:
        """PerExample from materialised per-example gradients [B, *p.shape] per parameter:
        squared norms per clipping group, and the weighted sum over the batch."""
        b = x.shape[0]
        nsq = x.new_zeros(b, self.num_groups)
        for k, t in zip(self.group_of, per):
            nsq[:, k] += t.reshape(b, -1).pow(2).sum(1)
        gof = self.group_of

        def weighted_sum(w: torch.Tensor) -> list[torch.Tensor]:
            return [torch.einsum("b,b...->...", w[:, k], t) for k, t in zip(gof, per)]

        return PerExample(nsq, weighted_sum, per_sample=lambda: per)


_GHOST_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)


def _owned_params(m: nn.Module) -> list[nn.Parameter]:
    return [p for p in m.parameters(recurse=False) if p.requires_grad]


def ghost_unsupported(module: nn.Module) -> list[str]:
    """Names of parameterised layers the ghost engine cannot handle, and of parameters
    shared by two layers (tied weights: the ghost rules would clip each layer's part of
    their gradient separately and keep only one part)."""
    bad = [f"{name or '<root>'} ({type(m).__name__})" for name, m in module.named_modules()
           if _owned_params(m) and not isinstance(m, _GHOST_TYPES)]
    seen: set[int] = set()
    for name, m in module.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if p.requires_grad and id(p) in seen:
                bad.append(f"{name}.{pname} (a parameter tied to another layer's)")
            seen.add(id(p))
    return bad


class GhostEngine(_Engine):
    """Per-example norms from activations and activation gradients (see module docstring)."""

    def __init__(self, module: nn.Module) -> None:
        bad = ghost_unsupported(module)
        if bad:
            raise ConfigError(f"the ghost engine supports Linear, Conv1d/2d, GroupNorm and LayerNorm; "
                              f"unsupported parameterised layers: {', '.join(bad)}; use engine='vmap'")
        self.layers = [m for m in module.modules() if _owned_params(m)]
        for m in self.layers:
            if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.padding_mode != "zeros":
                raise ConfigError(f"the ghost engine needs zero padding, {m} uses {m.padding_mode!r}; "
                                  "use engine='vmap'")
        self.params = []
        self.group_of = []
        for k, m in enumerate(self.layers):
            for p in _owned_params(m):
                self.params.append(p)
                self.group_of.append(k)
        self.num_groups = len(self.layers)
        self._records: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._versions: dict[int, int] = {}
        self._active = False
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if not self._active:
            return
        if id(m) in self._records:
            raise ConfigError(f"layer {m} is applied twice in one forward pass (weight sharing); "
                              "the ghost engine needs each layer once -- use engine='vmap'")
        self._records[id(m)] = (inp[0].detach(), out)
        self._versions[id(m)] = out._version

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def compute(self, clf: Classifier, x: torch.Tensor, y: torch.Tensor) -> PerExample:
        self._records.clear()
        self._active = True
        try:
            logits = clf(x)
        finally:
            self._active = False
        loss = F.cross_entropy(logits, y, reduction="sum")
        used = [m for m in self.layers if id(m) in self._records]
        outs = [self._records[id(m)][1] for m in used]
        for m, o in zip(used, outs):
            if o._version != self._versions[id(m)]:
                raise ConfigError(f"the output of {m} is modified in place later in the forward pass "
                                  "(e.g. ReLU(inplace=True)); use inplace=False or engine='vmap'")
        grads = torch.autograd.grad(loss, outs, allow_unused=True)
        return self._per_example(used, list(grads), x.shape[0], x)

    def _rule(self, m: nn.Module, a: torch.Tensor, g: torch.Tensor
              ) -> tuple[torch.Tensor, Callable[[torch.Tensor], list[torch.Tensor]]]:
        """The per-example rule of layer `m` (see `_layer_grads`); subclasses may add rules."""
        return _layer_grads(m, a, g)

    def _per_example(self, used: list[nn.Module], grads: list[torch.Tensor | None], b: int,
                     like: torch.Tensor) -> PerExample:
        """The PerExample of the recorded layers `used`, given the gradient of the summed
        loss with respect to each one's output (None: the output did not reach the loss)."""
        nsq = like.new_zeros(b, self.num_groups)
        sums: dict[int, Callable[[torch.Tensor], list[torch.Tensor]]] = {}
        for m, g in zip(used, grads):
            k = self.layers.index(m)
            a = self._records[id(m)][0]
            if g is None:
                g = torch.zeros_like(self._records[id(m)][1])
            norm_sq, fn = self._rule(m, a, g.detach())
            nsq[:, k] = norm_sq
            sums[k] = fn
        self._records.clear()
        layers = self.layers

        def weighted_sum(w: torch.Tensor) -> list[torch.Tensor]:
            out: list[torch.Tensor] = []
            for k, m in enumerate(layers):
                ps = _owned_params(m)
                if k in sums:
                    out.extend(sums[k](w[:, k]))
                else:
                    out.extend(torch.zeros_like(p) for p in ps)
            return out

        return PerExample(nsq, weighted_sum)


def _conv_pad(m: nn.Conv1d | nn.Conv2d) -> tuple[int, ...]:
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return (0,) * len(m.kernel_size)
        pads = []
        for k, d, _s in zip(m.kernel_size, m.dilation, m.stride):
            total = d * (k - 1)
            if total % 2:
                raise ConfigError(f"{m}: padding='same' with an even kernel is asymmetric; use "
                                  "engine='vmap'")
            pads.append(total // 2)
        return tuple(pads)
    return tuple(m.padding)


def _layer_grads(m: nn.Module, a: torch.Tensor, g: torch.Tensor
                 ) -> tuple[torch.Tensor, Callable[[torch.Tensor], list[torch.Tensor]]]:
    """Per-example squared gradient norm of layer `m` (all its parameters) and a function
    giving its weighted per-example gradient sums, from input `a` and output gradient `g`."""
    b = a.shape[0]
    has_bias = getattr(m, "bias", None) is not None and m.bias.requires_grad
    if isinstance(m, nn.Linear):
        if a.dim() == 2:
            gsq = g.pow(2).sum(1)
            nsq = gsq * a.pow(2).sum(1) + (gsq if has_bias else 0)

            def fn(w: torch.Tensor) -> list[torch.Tensor]:
                gw = g * w[:, None]
                out = [gw.t() @ a]
                if has_bias:
                    out.append(gw.sum(0))
                return out
            return nsq, fn
        a3, g3 = a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])
        t = a3.shape[1]
        if t * t < a3.shape[2] * g3.shape[2]:
            nsq = (torch.bmm(a3, a3.transpose(1, 2)) * torch.bmm(g3, g3.transpose(1, 2))).sum((1, 2))
        else:
            nsq = torch.einsum("bto,bti->boi", g3, a3).pow(2).sum((1, 2))
        gb = g3.sum(1)
        if has_bias:
            nsq = nsq + gb.pow(2).sum(1)

        def fn3(w: torch.Tensor) -> list[torch.Tensor]:
            gw = g3 * w[:, None, None]
            out = [gw.reshape(-1, gw.shape[-1]).t() @ a3.reshape(-1, a3.shape[-1])]
            if has_bias:
                out.append((gb * w[:, None]).sum(0))
            return out
        return nsq, fn3
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        is1d = isinstance(m, nn.Conv1d)
        pad = _conv_pad(m)
        gr = g.reshape(b, g.shape[1], -1)                       # [B, O, L]
        groups = m.groups
        wshape = m.weight.shape
        o, L = gr.shape[1], gr.shape[2]
        kg = int(torch.tensor(wshape[1:]).prod())
        og = o // groups
        g_g = gr.view(b, groups, og, L)
        gb = gr.sum(2) if has_bias else None
        if L * (kg + og) < og * kg:   # ghost norm via Gram matrices is cheaper
            if is1d:
                cols = F.unfold(a.unsqueeze(2), (1, m.kernel_size[0]), dilation=(1, m.dilation[0]),
                                padding=(0, pad[0]), stride=(1, m.stride[0]))
            else:
                cols = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=pad, stride=m.stride)
            cols_g = cols.view(b, groups, kg, L)
            ga = torch.einsum("bgkl,bgkm->bglm", cols_g, cols_g)
            gg = torch.einsum("bgol,bgom->bglm", g_g, g_g)
            nsq = (ga * gg).sum((1, 2, 3))

            def fnc(w: torch.Tensor) -> list[torch.Tensor]:
                gw = g_g * w[:, None, None, None]
                out = [torch.einsum("bgol,bgkl->gok", gw, cols_g).reshape(wshape)]
                if has_bias:
                    out.append((gb * w[:, None]).sum(0))
                return out
        else:
            # per-example weight gradients from one grouped weight-gradient convolution (the
            # batch folded into the channel groups), faster than im2col + batched matmul
            wdummy = torch.empty((b * o, *wshape[1:]), device=a.device, dtype=a.dtype)
            _, gw_all, _ = torch.ops.aten.convolution_backward(
                g.reshape(1, b * o, *g.shape[2:]), a.reshape(1, -1, *a.shape[2:]), wdummy, None,
                list(m.stride), list(pad), list(m.dilation), False, [0] * len(pad), b * groups,
                [False, True, False])
            per = gw_all.reshape(b, groups, og, kg)               # [B, G, O/G, K/G]
            nsq = per.pow(2).sum((1, 2, 3))

            def fnc(w: torch.Tensor) -> list[torch.Tensor]:
                out = [torch.einsum("b,bgok->gok", w, per).reshape(wshape)]
                if has_bias:
                    out.append((gb * w[:, None]).sum(0))
                return out
        if has_bias:
            nsq = nsq + gb.pow(2).sum(1)
        return nsq, fnc
    if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
        if isinstance(m, nn.GroupNorm):
            xh = F.group_norm(a, m.num_groups, eps=m.eps)
            red = [d for d in range(2, a.dim())]
        else:
            xh = F.layer_norm(a, m.normalized_shape, eps=m.eps)
            red = list(range(1, a.dim() - len(m.normalized_shape)))
        gw_ = (g * xh).sum(red) if red else g * xh
        gb_ = g.sum(red) if red else g
        parts = []
        if m.weight is not None and m.weight.requires_grad:
            parts.append(gw_)
        if m.bias is not None and m.bias.requires_grad:
            parts.append(gb_)
        nsq = sum(p.reshape(b, -1).pow(2).sum(1) for p in parts)

        def fnn(w: torch.Tensor) -> list[torch.Tensor]:
            shape = (b,) + (1,) * (parts[0].dim() - 1)
            return [(p * w.view(shape)).sum(0) for p in parts]
        return nsq, fnn  # type: ignore[return-value]
    raise ConfigError(f"no per-example rule for {type(m).__name__}")


class VmapEngine(_Engine):
    """torch.func per-example gradients (vmap over grad of the single-example loss)."""

    def __init__(self, module: nn.Module, clf: Classifier, chunk: int | None = None) -> None:
        self.names = [n for n, p in clf.named_parameters() if p.requires_grad]
        self.params = [p for _, p in clf.named_parameters() if p.requires_grad]
        owners: dict[str, int] = {}
        self.group_of = [owners.setdefault(n.rsplit(".", 1)[0], len(owners)) for n in self.names]
        self.num_groups = len(owners)
        self.chunk = chunk

    def compute(self, clf: Classifier, x: torch.Tensor, y: torch.Tensor) -> PerExample:
        from torch.func import functional_call, grad, vmap
        params = {n: p.detach() for n, p in zip(self.names, self.params)}
        buffers = {n: b for n, b in clf.named_buffers()}

        def loss_fn(prm: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            out = functional_call(clf, (prm, buffers), (xi.unsqueeze(0),))
            return F.cross_entropy(out, yi.unsqueeze(0))

        f = vmap(grad(loss_fn), in_dims=(None, 0, 0), randomness="different")
        step = self.chunk or max(x.shape[0], 1)
        chunks = [f(params, x[i:i + step], y[i:i + step]) for i in range(0, x.shape[0], step)]
        per = [torch.cat([c[n] for c in chunks]) if chunks else
               torch.zeros((0, *p.shape), device=p.device) for n, p in zip(self.names, self.params)]
        return self._from_per_sample(per, x)


class OpacusEngine(_Engine):
    """Opacus's GradSampleModule hooks (for comparison; needs `pip install opacus`)."""

    def __init__(self, module: nn.Module, clf: Classifier) -> None:
        try:
            from opacus import GradSampleModule
        except ImportError as e:  # pragma: no cover - exercised only without opacus
            raise ConfigError("engine='opacus' needs Opacus (pip install opacus; it is in the dev extra)") from e
        self.gsm = GradSampleModule(module, loss_reduction="sum")
        self.params = [p for p in module.parameters() if p.requires_grad]
        owners: dict[int, int] = {}
        self.group_of = []
        for m in module.modules():
            for _p in _owned_params(m):
                self.group_of.append(owners.setdefault(id(m), len(owners)))
        self.num_groups = len(owners)

    def compute(self, clf: Classifier, x: torch.Tensor, y: torch.Tensor) -> PerExample:
        for p in self.params:
            p.grad_sample = None
            p.grad = None
        self.gsm.train()
        logits = self.gsm(clf.normalize(x))
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            F.cross_entropy(logits, y, reduction="sum").backward()
        per = [p.grad_sample for p in self.params]
        for p in self.params:
            p.grad_sample = None
            p.grad = None
        return self._from_per_sample(per, x)

    def close(self) -> None:
        self.gsm._close()


def make_engine(clf: Classifier, engine: str = "auto") -> _Engine:
    """The per-example gradient engine for `clf` ('auto' = ghost when supported, else vmap)."""
    if engine not in ENGINES:
        raise unknown_name("per-example gradient engine", engine, ENGINES)
    if find_batchnorm(clf.module):
        check_dp_model(clf)
    if engine == "auto":
        engine = "ghost" if not ghost_unsupported(clf.module) else "vmap"
    if engine == "ghost":
        return GhostEngine(clf.module)
    if engine == "vmap":
        return VmapEngine(clf.module, clf)
    return OpacusEngine(clf.module, clf)


def per_example_gradients(model: nn.Module, weights: Tensors, x: torch.Tensor,
                          y: torch.Tensor) -> Tensors:
    """Per-example gradients of the cross-entropy at `weights` (a name -> tensor dict used
    through torch.func.functional_call), [B, *param.shape] per parameter."""
    def loss_one(w: Tensors, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, w, (xi.unsqueeze(0),)), yi.unsqueeze(0))
    return vmap(grad(loss_one), in_dims=(None, 0, 0), randomness="different")(weights, x, y)
