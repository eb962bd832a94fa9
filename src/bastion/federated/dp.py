"""Federated learning with differential privacy at the client level and the instance level.

Fed-SDP -- client-level DP-FedAvg (McMahan, Ramage, Talwar & Zhang, ICLR 2018). Each round
the server samples K of the N clients; every update is clipped to L2 norm S,

    delta_k <- delta_k * min(1, S / ||delta_k||),

the clipped updates are summed, Gaussian noise N(0, sigma^2 S^2 I) is added to the sum and
the result is divided by K (the fixed-denominator estimator). One round is one
subsampled Gaussian mechanism on the client data set with rate q = K / N and noise
multiplier sigma; the RDP accountant (`bastion.privacy.accountants`) composes the rounds.
`noise='server'` adds the noise to the sum at the server, as McMahan et al. do; with
`noise='client'` every sampled client adds N(0, sigma^2 S^2 / K) to its own clipped update
before upload, so the aggregate carries the same N(0, sigma^2 S^2) noise (same accounting,
assuming honest clients) and, in addition, no single upload is exposed in the clear
(the per-client sanitisation of Wei et al. 2020 / Geyer et al. 2017).

Fed-CDP -- instance-level DP in every client's local training (Wei & Liu, dissertation
ch. 4 and 6; Wei et al., ICDCS 2021). Each client runs DP-SGD on its own data: Poisson
sampling with q_k = B / n_k, per-example clipping to C_t, Gaussian noise
N(0, sigma_t^2 S_t^2) on the clipped sum. The local step IS `bastion.training.dp.DPSGD`
(same engines, same dynamic variants: dynS = 'dyn-s', dyn-sigma, dyn[S,sigma] =
'dyn-s-sigma', with the linear / exp / cyclic decay policies); the schedules run over the
whole federated training (round r's local steps continue where round r-1's left off), so
C_t and sigma_t decay as the rounds progress. Every client keeps a privacy ledger of the
local steps it actually ran; `privacy()` reports each client's epsilon under every
accountant and the worst client's (conservatively without amplification by the
server's client sampling).

Type-2 leakage (per-example gradients inside local training) is what separates them:
Fed-SDP sanitises only what leaves the client, Fed-CDP every per-example gradient.
"""

from __future__ import annotations

import copy
import math
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from bastion.attacks.privacy.leakage.payload import SharedGradient
from bastion.core import Classifier, ConfigError, unknown_name
from bastion.federated.aggregators import ClientUpdate
from bastion.federated.simulation import FedConfig, FedHook, LeakageEvent
from bastion.privacy.accountants import PrivacyLedger, check_delta
from bastion.training.dp import DPSGD, DPConfig, canonical_variant
from bastion.training.dp_schedules import canonical_policy

Tensors = dict[str, torch.Tensor]
NOISE_PLACES: tuple[str, ...] = ("server", "client")
#: the DP-SGD variants Fed-CDP's local training supports (fixed and dynamic parameters)
FED_CDP_VARIANTS: tuple[str, ...] = ("baseline", "cdecay", "l2-max", "dyn-s", "dyn-sigma",
                                     "dyn-s-sigma")


def _seed(noise_seed: int | None, *parts: int) -> int:
    """A 63-bit seed from `noise_seed` and the place in the run (None: from the OS CSPRNG)."""
    if noise_seed is None:
        return secrets.randbits(63)
    h = int(noise_seed)
    for p in parts:
        h = (h * 0x100000001B3 + int(p) + 0x9E3779B97F4A7C15) % (2**63 - 1)
    return h


def _generator(noise_seed: int | None, *parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(noise_seed, *parts))


def _check_noise_seed(noise_seed: int | None) -> None:
    if noise_seed is not None and (isinstance(noise_seed, bool) or not isinstance(noise_seed, int)
                                   or not 0 <= noise_seed < 2**63):
        raise ConfigError(f"noise_seed must be an integer in [0, 2^63) or None (secure noise), "
                          f"got {noise_seed!r}")


#: per-step RDP curves by (q, sigma), shared by all clients' ledgers: under the dynamic
#: variants every client meets the same sigma_t, and computing a curve takes milliseconds
_RDP_CURVES: dict[tuple[float, float], tuple[Any, Any]] = {}


def charge(ledger: PrivacyLedger, q: float, sigma: float, n: int = 1) -> None:
    """`ledger.step(q, sigma, n)`, reusing the RDP curve of a (q, sigma) seen before."""
    hit = _RDP_CURVES.get((q, sigma))
    if hit is not None:
        ledger._cache = (q, sigma, *hit)
    ledger.step(q, sigma, n)
    if hit is None and ledger._cache is not None and len(_RDP_CURVES) < 100_000:
        _RDP_CURVES[(q, sigma)] = (ledger._cache[2], ledger._cache[3])


class _Schedule:
    """Stands in for DPSGD's ledger inside a client: records (q, sigma, count) only; the
    client's real ledger (`FedCDP.account`) is charged once per round from it."""

    def __init__(self) -> None:
        self.schedule: list[tuple[float, float, int]] = []

    def step(self, q: float, sigma: float, n: int = 1) -> None:
        if self.schedule and self.schedule[-1][:2] == (q, sigma):
            self.schedule[-1] = (q, sigma, self.schedule[-1][2] + n)
        else:
            self.schedule.append((q, sigma, n))


def update_norm(delta: Tensors) -> float:
    """L2 norm of a client update over all its tensors."""
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in delta.values()))


# --------------------------------------------------------------------------- Fed-SDP


@dataclass(frozen=True)
class FedSDPConfig:
    """Client-level DP-FedAvg.

    Attributes:
        clip: S, the bound on each client update's L2 norm (> 0).
        sigma: noise multiplier (>= 0; 0 = clipping only, no privacy: epsilon = inf).
        delta: target delta of the (epsilon, delta) guarantee (< 1).
        noise: 'server' (N(0, sigma^2 S^2) on the sum, McMahan et al.) or 'client'
            (N(0, sigma^2 S^2 / K) on each upload).
        noise_seed: None = noise from the OS CSPRNG; an integer makes the noise
            reproducible (NOT private: anyone with the seed removes it).
    """

    clip: float = 1.0
    sigma: float = 1.0
    delta: float = 1e-5
    noise: str = "server"
    noise_seed: int | None = None

    def validate(self) -> None:
        if isinstance(self.clip, bool) or not isinstance(self.clip, (int, float)) \
                or not math.isfinite(self.clip) or not self.clip > 0:
            raise ConfigError(f"Fed-SDP clip S must be a positive number (S > 0), got {self.clip!r}")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) \
                or not math.isfinite(self.sigma) or self.sigma < 0:
            raise ConfigError(f"Fed-SDP noise multiplier sigma must be >= 0, got {self.sigma!r}")
        check_delta(self.delta)
        if self.noise not in NOISE_PLACES:
            raise unknown_name("Fed-SDP noise placement", self.noise, NOISE_PLACES)
        _check_noise_seed(self.noise_seed)


class FedSDP:
    """Fed-SDP for one federated run: `clip_update` is the client-side update transform
    (clip to S, plus the client's noise share with noise='client') and the object itself is
    the server's aggregator (sum / K plus the server noise), charging one subsampled
    Gaussian step at q = K / N per round to its ledger.

    Args:
        cfg: FedSDPConfig.
        fed: the run's FedConfig (num_clients N, clients_per_round K, rounds).
    """

    def __init__(self, cfg: FedSDPConfig, fed: FedConfig) -> None:
        cfg.validate()
        fed.validate()
        self.cfg, self.fed = cfg, fed
        self.q = fed.clients_per_round / fed.num_clients
        self.ledger = PrivacyLedger()
        self.rounds: list[dict[str, Any]] = []

    @property
    def client_noise_std(self) -> float:
        """Per-coordinate noise std each client adds with noise='client'."""
        if self.cfg.noise != "client":
            return 0.0
        return self.cfg.sigma * self.cfg.clip / math.sqrt(self.fed.clients_per_round)

    @property
    def server_noise_std(self) -> float:
        """Per-coordinate noise std the server adds to the sum with noise='server'."""
        return self.cfg.sigma * self.cfg.clip if self.cfg.noise == "server" else 0.0

    def clip_update(self, upd: ClientUpdate) -> ClientUpdate:
        """Clip the update to S (and add the client's noise share with noise='client')."""
        norm = update_norm(upd.delta)
        factor = min(1.0, self.cfg.clip / (norm + 1e-12))
        delta = {k: v * factor for k, v in upd.delta.items()}
        std = self.client_noise_std
        if std > 0:
            gen = _generator(self.cfg.noise_seed, 1, upd.round, upd.client)
            delta = {k: v + std * torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device)
                     for k, v in delta.items()}
        meta = {**upd.meta, "update_norm": norm, "clipped_norm": norm * factor}
        return replace(upd, delta=delta, meta=meta)

    def __call__(self, updates: Sequence[ClientUpdate]) -> Tensors:
        """The noisy fixed-denominator mean of the (already clipped) updates."""
        if not updates:
            raise ConfigError("aggregation needs at least one client update")
        rnd = updates[0].round
        k = self.fed.clients_per_round
        gen = _generator(self.cfg.noise_seed, 0, rnd)
        std = self.server_noise_std
        out = {}
        for name in updates[0].delta:
            s = torch.stack([u.delta[name] for u in updates]).sum(0)
            if std > 0:
                s = s + std * torch.randn(s.shape, generator=gen, dtype=s.dtype).to(s.device)
            out[name] = s / k
        if self.cfg.sigma > 0:
            charge(self.ledger, self.q, self.cfg.sigma)
        self.rounds.append({"round": rnd, "clients": [u.client for u in updates],
                            "clipped_norms": [u.meta.get("clipped_norm") for u in updates]})
        return out

    def epsilon(self, accountant: str = "rdp") -> float:
        """Client-level epsilon spent so far (inf with sigma = 0)."""
        if self.cfg.sigma == 0:
            return math.inf
        return self.ledger.epsilon(self.cfg.delta, accountant)

    def privacy(self) -> dict[str, Any]:
        eps = ({k: math.inf for k in ("rdp",)} if self.cfg.sigma == 0
               else self.ledger.epsilons(self.cfg.delta))
        return {"mechanism": "Fed-SDP (client-level DP-FedAvg, McMahan et al. 2018)",
                "level": "client", "clip": self.cfg.clip, "sigma": self.cfg.sigma,
                "noise": self.cfg.noise, "delta": self.cfg.delta, "sample_rate": self.q,
                "rounds": self.ledger.steps, "epsilon": eps.get("rdp", math.inf),
                "accountants": eps,
                "noise_seeded": self.cfg.noise_seed is not None}


# --------------------------------------------------------------------------- Fed-CDP


@dataclass(frozen=True)
class FedCDPConfig:
    """Instance-level DP in each client's local training (DP-SGD with the dissertation's
    fixed and dynamic privacy parameters).

    Attributes:
        clip: per-example clipping bound C (start value C0 of the decaying variants; > 0).
        sigma: noise multiplier (start value sigma0 of the dyn-sigma variants; > 0).
        delta: target delta per client.
        variant: one of FED_CDP_VARIANTS or an alias ('fixed', 'dyns', 'dyn[s,sigma]', ...).
        decay, sigma_decay, clip_final, sigma_final, half_period, per_layer: as in
            `bastion.training.dp.DPConfig` (decay over the whole federated training).
        engine: per-example gradient engine ('auto', 'ghost', 'vmap', 'opacus').
        poisson: Poisson sampling of each local step (needed for the guarantee); False
            takes shuffled batches of the local batch size (accounted as if Poisson).
        noise_seed: None = secure noise; an integer makes every client's noise and
            sampling reproducible (NOT private).
    """

    clip: float = 4.0
    sigma: float = 1.0
    delta: float = 1e-5
    variant: str = "baseline"
    decay: str = "linear"
    sigma_decay: str | None = None
    clip_final: float | None = None
    sigma_final: float | None = None
    half_period: int | None = None
    per_layer: bool = False
    engine: str = "auto"
    poisson: bool = True
    noise_seed: int | None = None

    def validate(self) -> None:
        if isinstance(self.clip, bool) or not isinstance(self.clip, (int, float)) \
                or not math.isfinite(self.clip) or not self.clip > 0:
            raise ConfigError(f"Fed-CDP clip C must be a positive number (C > 0), got {self.clip!r}")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) \
                or not math.isfinite(self.sigma) or self.sigma < 0:
            raise ConfigError(f"Fed-CDP noise multiplier sigma must be >= 0, got {self.sigma!r}")
        if self.sigma == 0:
            raise ConfigError("Fed-CDP noise multiplier sigma = 0 would be non-private local "
                              "training; use sigma > 0 (or plain FedAvg)")
        if canonical_variant(self.variant) not in FED_CDP_VARIANTS:
            raise unknown_name("Fed-CDP variant", self.variant, FED_CDP_VARIANTS)
        canonical_policy(self.decay)
        _check_noise_seed(self.noise_seed)
        self.dp_config(FedConfig(), 1, 1).validate(1)

    def dp_config(self, fed: FedConfig, n: int, total_steps: int) -> DPConfig:
        """The DPConfig of one client's local DP-SGD (n local examples, `total_steps`
        planned over the whole run, plain SGD at the local learning rate)."""
        return DPConfig(sigma=float(self.sigma), clip=float(self.clip), delta=self.delta,
                        variant=self.variant, decay=self.decay, sigma_decay=self.sigma_decay,
                        clip_final=self.clip_final, sigma_final=self.sigma_final,
                        half_period=self.half_period, per_layer=self.per_layer,
                        batch_size=min(fed.local_batch_size, n), steps=total_steps,
                        lr=fed.local_lr, optimizer="sgd", momentum=0.0, engine=self.engine,
                        poisson=self.poisson, noise_seed=0, progress=False)


@dataclass
class ClientPrivacy:
    """One client's privacy ledger and the local DP-SGD steps behind it."""

    ledger: PrivacyLedger = field(default_factory=PrivacyLedger)
    rounds: list[int] = field(default_factory=list)
    trace: list[dict[str, float]] = field(default_factory=list)


class FedCDP:
    """Fed-CDP's local training for one federated run: pass the object as
    `run_fedavg(..., local_trainer=fed_cdp)`; it runs DP-SGD (`DPSGD.step`) on every
    sampled client, taps type-2 payloads as the client would release them (the clipped
    per-example gradient plus N(0, sigma_t^2 S_t^2)) and accounts every client.

    Args:
        cfg: FedCDPConfig. fed: the run's FedConfig.
        account: charge the ledgers here (False in a remote Flower client: the server's
            FedCDP accounts from the schedule each client reports).
    """

    def __init__(self, cfg: FedCDPConfig, fed: FedConfig, account: bool = True) -> None:
        cfg.validate()
        fed.validate()
        self.cfg, self.fed, self.account_here = cfg, fed, account
        self.clients: dict[int, ClientPrivacy] = {}
        self.last: dict[str, Any] = {}
        self._work: Classifier | None = None
        if cfg.noise_seed is not None:
            warnings.warn(f"Fed-CDP noise seeded with noise_seed={cfg.noise_seed}: reproducible "
                          "but NOT private", UserWarning, stacklevel=2)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_work"] = None
        return state

    def steps_per_round(self, n: int) -> int:
        """Local DP-SGD steps of a client with n examples per round."""
        bs = min(self.fed.local_batch_size, n)
        per_epoch = max(1, round(n / bs))
        steps = self.fed.local_epochs * per_epoch
        return min(steps, self.fed.local_steps) if self.fed.local_steps is not None else steps

    def _model(self, model: Classifier) -> Classifier:
        if self._work is None:
            self._work = copy.deepcopy(model)
        return self._work

    def __call__(self, model: Classifier, start: Tensors, x: torch.Tensor, y: torch.Tensor,
                 cfg: FedConfig, gen: torch.Generator, rnd: int, client: int,
                 hooks: Sequence[FedHook] = ()) -> tuple[Tensors, int, float]:
        """One client's local DP-SGD from the global weights `start` (a LocalTrainer)."""
        n = int(x.shape[0])
        spr = self.steps_per_round(n)
        work = self._model(model)
        with torch.no_grad():
            for name, p in work.named_parameters():
                if name in start:
                    p.copy_(start[name])
        seed = None if self.cfg.noise_seed is None else _seed(self.cfg.noise_seed, 2, rnd, client)
        dcfg = replace(self.cfg.dp_config(cfg, n, self.fed.rounds * spr), noise_seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dp = DPSGD(work, dcfg, n)
        dp.ledger = _Schedule()  # type: ignore[assignment]
        names = {id(p): k for k, p in work.named_parameters()}
        pnames = [names[id(p)] for p in dp.params]
        tap_gen = _generator(self.cfg.noise_seed, 3, rnd, client)
        dp.t = rnd * spr
        order: torch.Tensor | None = None
        loss_sum, trace = 0.0, []
        try:
            for step in range(spr):
                if self.cfg.poisson:
                    xb, yb = dp.sample(x, y)
                else:
                    bs = dcfg.batch_size
                    pos = (step % max(1, round(n / bs))) * bs
                    if pos == 0 or order is None:
                        order = torch.randperm(n, generator=gen).to(x.device)
                    idx = order[pos:pos + bs]
                    xb, yb = x[idx], y[idx]
                tap = [h for h in hooks if h.wants_type2(rnd, client, step)]
                if tap and xb.shape[0]:
                    self._type2(dp, work, pnames, xb, yb, tap, tap_gen, rnd, client, step)
                if xb.shape[0]:
                    with torch.no_grad():
                        loss_sum += float(F.cross_entropy(work(xb), yb))
                info = dp.step(xb, yb)
                trace.append({"step": info.step, "batch": info.batch, "clip": info.clip,
                              "sensitivity": info.sensitivity, "sigma": info.sigma,
                              "noise_std": info.noise_std, "max_norm": info.max_norm})
        finally:
            dp.close()
        w = {k: p.detach().clone() for k, p in work.named_parameters() if k in start}
        schedule = [list(s) for s in dp.ledger.schedule]
        self.last = {"client": client, "round": rnd, "schedule": schedule, "trace": trace}
        if self.account_here:
            self.account(client, rnd, schedule, trace)
        return w, spr, loss_sum / max(spr, 1)

    def _type2(self, dp: DPSGD, work: Classifier, pnames: list[str], xb: torch.Tensor,
               yb: torch.Tensor, tap: list[FedHook], tap_gen: torch.Generator, rnd: int,
               client: int, step: int) -> None:
        """Each example's released gradient at this step (clipped + its own noise draw from
        a separate generator, so tapping does not change the training noise)."""
        weights = {k: p.detach().clone() for k, p in work.named_parameters()}
        saved = dp.gen
        dp.gen = tap_gen
        try:
            for j in range(xb.shape[0]):
                rel, info = dp.privatize(xb[j:j + 1], yb[j:j + 1])
                grads = {k: g * dp.expected_batch for k, g in zip(pnames, rel)}
                ev = LeakageEvent(2, rnd, client, step, SharedGradient(
                    weights, grads, batch_size=1,
                    meta={"leakage_type": 2, "round": rnd, "client": client, "step": step,
                          "fed_cdp": {"clip": info.clip, "sigma": info.sigma,
                                      "noise_std": info.noise_std}}),
                    xb[j:j + 1], yb[j:j + 1])
                for h in tap:
                    h.on_type2(ev)
        finally:
            dp.gen = saved

    def account(self, client: int, rnd: int, schedule: Sequence[Sequence[float]],
                trace: Sequence[dict[str, float]] = ()) -> None:
        """Charge client `client`'s ledger with one round's local steps [(q, sigma, count)]."""
        cp = self.clients.setdefault(int(client), ClientPrivacy())
        for q, sigma, count in schedule:
            charge(cp.ledger, float(q), float(sigma), int(count))
        cp.rounds.append(int(rnd))
        cp.trace.extend(trace)

    def epsilon(self, accountant: str = "rdp") -> float:
        """The worst client's epsilon (0 before any local step)."""
        return max((c.ledger.epsilon(self.cfg.delta, accountant) for c in self.clients.values()),
                   default=0.0)

    def privacy(self) -> dict[str, Any]:
        per = {c: p.ledger.epsilons(self.cfg.delta) for c, p in sorted(self.clients.items())}
        worst = {acc: max(v[acc] for v in per.values()) for acc in next(iter(per.values()))} \
            if per else {}
        return {"mechanism": "Fed-CDP (instance-level DP-SGD in every client's local training)",
                "level": "instance", "variant": canonical_variant(self.cfg.variant),
                "config": asdict(self.cfg), "delta": self.cfg.delta,
                "epsilon": worst.get("rdp", 0.0), "accountants": worst,
                "per_client_rdp": {str(c): v["rdp"] for c, v in per.items()},
                "per_client_steps": {str(c): p.ledger.steps for c, p in sorted(self.clients.items())},
                "sampling_amplification": "none (every client charged for the rounds it ran)",
                "noise_seeded": self.cfg.noise_seed is not None}
