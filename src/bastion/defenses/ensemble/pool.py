"""A pool of diverse base models for diversity ensembles (Wei et al. 2020, section 3.5):
members of different architectures, kernel sizes, feature-map widths and training
epochs, trained on one task and cached as checkpoints with a manifest (`pool.json`).

    cfg = PoolConfig.from_dict(load_yaml_file("pool.yaml"))
    manifest = build_pool(cfg)          # trains what is missing, skips finished members
    pool = load_pool(manifest)          # -> Pool(members, names)

A pool config (YAML or dict):

    data: mnist-5k
    out: runs/pool
    seed: 0
    train: {batch_size: 64, lr: 0.001}          # TrainConfig fields shared by all members
    members:
      - {name: cnn-small, arch: cnn-small, epochs: 3}
      - {name: cnn-small-wide, arch: cnn-small, args: {channels: [32, 64]}, epochs: 3}
      - {name: mlp, arch: mlp, epochs: 5, lr: 0.002}

Building is resumable: the manifest is rewritten atomically after each member, and a
member whose checkpoint and manifest entry exist is not trained again. A user's own
checkpoints join as a pool with `load_pool([path, ...])`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bastion.core import Classifier, ConfigError, require
from bastion.defenses.ensemble.ensemble import check_members

MANIFEST = "pool.json"
MIN_MEMBERS = 1
MEMBER_KEYS = ("name", "arch", "args", "epochs", "seed", "lr", "batch_size", "optimizer")


@dataclass(frozen=True)
class MemberSpec:
    """One pool member: a zoo architecture with its arguments and training length.

    Attributes:
        name: unique label (also the checkpoint's file name).
        arch: zoo architecture (cnn7, cnn-small, lenet, mlp, resnet).
        args: architecture arguments (kernel sizes, channels, hidden sizes...).
        epochs: training epochs.
        seed: training seed (None = the pool's seed + member index).
        lr, batch_size, optimizer: override the pool's shared training settings.
    """

    name: str
    arch: str
    args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 3
    seed: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    optimizer: str | None = None

    def __post_init__(self) -> None:
        require(isinstance(self.name, str) and self.name.strip() != "" and "/" not in self.name
                and self.name not in (".", ".."), f"pool member name must be a plain non-empty name, got {self.name!r}")
        require(isinstance(self.args, dict), f"member {self.name}: args must be a mapping, got {self.args!r}")
        require(isinstance(self.epochs, int) and not isinstance(self.epochs, bool) and self.epochs >= 1,
                f"member {self.name}: epochs must be an integer >= 1, got {self.epochs!r}")


@dataclass(frozen=True)
class PoolConfig:
    """A pool to train.

    Attributes:
        data: data set name (training split for fitting, test split for the accuracy).
        out: folder for the checkpoints and the manifest.
        members: the member specs (>= 1; XEnsemble wants >= 9).
        seed: base seed; member i trains with seed + i unless it sets its own.
        train: shared TrainConfig fields (batch_size, lr, optimizer, weight_decay, schedule).
        device: 'auto', 'cpu' or 'cuda'.
    """

    data: str
    out: str
    members: tuple[MemberSpec, ...]
    seed: int = 0
    train: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"

    def __post_init__(self) -> None:
        require(len(self.members) >= MIN_MEMBERS, "a pool needs at least one member")
        names = [m.name for m in self.members]
        dup = sorted({n for n in names if names.count(n) > 1})
        require(not dup, f"pool member names must be unique; repeated: {', '.join(dup)}")
        from bastion.training.fit import TrainConfig

        allowed = {f.name for f in fields(TrainConfig)} - {"epochs", "seed", "progress"}
        bad = sorted(set(self.train) - allowed)
        require(not bad, f"pool train settings have no field {', '.join(bad)}; valid: {', '.join(sorted(allowed))}")

    @classmethod
    def from_dict(cls, d: Any) -> PoolConfig:
        require(isinstance(d, Mapping), f"a pool config must be a mapping, got {type(d).__name__}")
        known = {"data", "out", "members", "seed", "train", "device"}
        extra = sorted(set(d) - known)
        require(not extra, f"pool config has no key {', '.join(map(str, extra))}; valid: {', '.join(sorted(known))}")
        for k in ("data", "out", "members"):
            require(k in d, f"pool config needs '{k}'")
        require(isinstance(d["members"], list), "pool config: members must be a list")
        members = []
        for i, m in enumerate(d["members"]):
            require(isinstance(m, Mapping), f"pool member {i} must be a mapping, got {m!r}"[:200])
            bad = sorted(set(m) - set(MEMBER_KEYS))
            require(not bad, f"pool member {i}: no key {', '.join(map(str, bad))}; valid: {', '.join(MEMBER_KEYS)}")
            require("arch" in m, f"pool member {i} needs an 'arch'")
            mm = dict(m)
            mm.setdefault("name", f"{mm['arch']}-{i}")
            members.append(MemberSpec(**mm))
        seed = d.get("seed", 0)
        require(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
                f"pool seed must be a non-negative integer, got {seed!r}")
        train = d.get("train") or {}
        require(isinstance(train, Mapping), "pool config: train must be a mapping")
        return cls(data=str(d["data"]), out=str(d["out"]), members=tuple(members), seed=seed,
                   train=dict(train), device=str(d.get("device", "auto")))


def check_pool_config(cfg: PoolConfig) -> None:
    """Every check that needs no training: architectures and their arguments against the
    data set's input shape, training settings, the data set name."""
    from bastion.core import InputSpec
    from bastion.data import load
    from bastion.models.checkpoint import build_classifier

    test = load(cfg.data, "test")
    spec = InputSpec(tuple(test.input_shape))
    for i, m in enumerate(cfg.members):
        try:
            build_classifier(m.arch, spec, test.num_classes, m.args, device="cpu")
        except ConfigError as e:
            raise ConfigError(f"pool member {m.name}: {e}") from None
        _train_config(cfg, m, i).validate()


def _train_config(cfg: PoolConfig, m: MemberSpec, i: int) -> Any:
    from bastion.training.fit import TrainConfig

    over = {k: getattr(m, k) for k in ("lr", "batch_size", "optimizer") if getattr(m, k) is not None}
    from bastion.params import build

    return build(TrainConfig, {**cfg.train, **over, "epochs": m.epochs,
                               "seed": cfg.seed + i if m.seed is None else m.seed, "progress": False},
                 f"pool member {m.name} training")


def read_manifest(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    if not p.is_file():
        raise ConfigError(f"no pool manifest at {p}; build the pool with 'bastion pool build --config pool.yaml'")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{p}: not a readable pool manifest ({e})") from None
    require(isinstance(data, dict) and isinstance(data.get("members"), list),
            f"{p}: a pool manifest is an object with a 'members' list")
    return data


def build_pool(cfg: PoolConfig, on_member: Callable[[dict[str, Any]], None] | None = None,
               progress: bool | None = None) -> Path:
    """Train every member not yet in the manifest, save each as a checkpoint under
    `cfg.out`, and rewrite the manifest after each one. Returns the manifest path."""
    from bastion.core import InputSpec, seed_everything
    from bastion.data import load
    from bastion.fileio import atomic_write, strict_json
    from bastion.models.checkpoint import build_classifier, save_classifier
    from bastion.progress import task
    from bastion.training.fit import fit

    check_pool_config(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    done: dict[str, dict[str, Any]] = {}
    if path.is_file():
        old = read_manifest(path)
        done = {e["name"]: e for e in old["members"] if isinstance(e, dict) and "name" in e
                and (out / str(e.get("checkpoint", ""))).is_file()}
    train, test = load(cfg.data, "train"), load(cfg.data, "test")
    spec = InputSpec(tuple(train.input_shape))
    record: dict[str, Any] = {"data": cfg.data, "seed": cfg.seed, "train": cfg.train,
                              "input_shape": list(spec.shape), "num_classes": train.num_classes,
                              "members": []}
    with task("pool build", len(cfg.members), progress) as bar:
        for i, m in enumerate(cfg.members):
            spec_rec = {k: v for k, v in asdict(m).items()}
            prev = done.get(m.name)
            if prev is not None and prev.get("spec") == spec_rec:
                record["members"].append(prev)
                bar.advance(1, info=f"{m.name} (cached)")
                continue
            tc = _train_config(cfg, m, i)
            seed_everything(tc.seed)  # the initial weights too: a rebuilt pool is the same pool
            clf = build_classifier(m.arch, spec, train.num_classes, m.args, device=cfg.device, name=m.name)
            res = fit(clf, train, test, tc)
            ck = f"{m.name}.st"
            save_classifier(out / ck, clf, dataset=cfg.data, test_accuracy=res.test_accuracy,
                            epochs=m.epochs, seed=tc.seed)
            entry = {"name": m.name, "checkpoint": ck, "arch": m.arch, "args": m.args,
                     "epochs": m.epochs, "seed": tc.seed, "test_accuracy": res.test_accuracy,
                     "train_seconds": res.wall_time, "spec": spec_rec}
            record["members"].append(entry)
            # the manifest lists finished members only, so an interrupted build resumes
            partial = {**record, "members": record["members"] + [
                e for n, e in done.items() if n not in {r["name"] for r in record["members"]}]}
            atomic_write(path, strict_json(partial))
            if on_member:
                on_member(entry)
            bar.advance(1, info=f"{m.name} acc {res.test_accuracy:.3f}")
    atomic_write(path, strict_json(record))
    return path


@dataclass
class Pool:
    """Loaded pool members (Classifiers on one input domain with one set of classes)."""

    members: list[Classifier]
    names: list[str]
    info: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.members)

    def subset(self, team: Sequence[int]) -> list[Classifier]:
        return [self.members[i] for i in team]


def load_pool(source: str | Path | Sequence[str | Path] | Sequence[Classifier],
              device: str = "auto") -> Pool:
    """A pool from a manifest (its path or its folder), a list of checkpoint paths, or a
    list of Classifiers. Members must agree on input shape, bounds and classes."""
    from bastion.models.checkpoint import load_classifier

    if isinstance(source, (str, Path)):
        p = Path(source)
        man = read_manifest(p)
        base = p if p.is_dir() else p.parent
        members, names, info = [], [], []
        for e in man["members"]:
            require(isinstance(e, dict) and isinstance(e.get("checkpoint"), str),
                    f"{p}: each manifest member needs a 'checkpoint' file name")
            clf = load_classifier(base / e["checkpoint"], device=device)
            clf.name = str(e.get("name", clf.name))
            members.append(clf)
            names.append(clf.name)
            info.append(e)
    else:
        items = list(source)
        require(len(items) >= 1, "a pool needs at least one member")
        members = [it if isinstance(it, Classifier) else load_classifier(it, device=device) for it in items]
        names = [m.name if isinstance(it, Classifier) else Path(str(it)).stem for m, it in zip(members, items)]
        info = [{"name": n} for n in names]
    check_members(members, "pool")
    return Pool(members, names, info)
