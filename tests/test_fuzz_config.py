"""Property-based tests over audit configs: random and mutated dicts around configs/demo.yaml.

Property: validation (`parse_config` and every section's validator, the checks the audit
runs before any work) either accepts the config or raises a BastionError with a message;
never another exception. Accepted configs hold only finite budgets, known target modes and
bounded sizes. Cases run are printed (run with -s) and recorded in .cache/fuzz-counts.json.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.audit.config import parse_config
from bastion.audit.sections import validate_section
from bastion.core import BastionError

DEMO = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())
EXAMPLES = int(os.environ.get("BASTION_FUZZ_EXAMPLES", "400"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("BASTION_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.too_slow])
SECTION_TEMPLATES = [
    *DEMO["sections"],
    {"kind": "leakage", "attack": "cpl", "inits": ["patterned"], "defenses": ["none", "noise:0.01"], "n": 2},
    {"kind": "dp", "accountants": True, "delta": 1e-5},
    {"kind": "membership", "attacks": ["lira"], "shadows": 4, "variance": "global", "method": "loop"},
    {"kind": "evasion", "attacks": [{"attack": "pgd", "eps": [0.1], "targeted": "ll", "params": {"steps": 5}},
                                    {"attack": "deepfool", "eps": [0.1, 0.2]}]},
]

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["most", "ll", "next", "random", "bogus", "linf", "l2", "fgsm", "pgd", "lira",
                     "per-example", "global", "auto", "vmap", "noise:0.1", "prune:2", "", "1e400", "nan"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=10)
COUNT = {"random": 0, "mutated": 0, "accepted": 0}


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _set(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    cur = obj
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return obj


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    cfg = copy.deepcopy(DEMO)
    cfg["sections"] = [copy.deepcopy(draw(st.sampled_from(SECTION_TEMPLATES)))
                       for _ in range(draw(st.integers(0, 3)))]
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(cfg)))
        action = draw(st.sampled_from(["replace", "replace", "add-key", "delete"]))
        target = cfg
        for p in path:
            target = target[p]
        if action == "add-key" and isinstance(target, dict):
            target[draw(st.sampled_from(["eps", "n", "targeted", "variance", "params", "steps", "bogus",
                                         "shadows", "method", "delta", "seed", "batch_size"]))] = draw(VALUES)
        elif action == "delete" and path and isinstance(path[-1], str):
            parent = cfg
            for p in path[:-1]:
                parent = parent[p]
            parent.pop(path[-1], None)
        else:
            cfg = _set(cfg, path, draw(VALUES))
    return cfg


def validate(raw: Any) -> None:
    """What the audit checks before any work: the config model and every section."""
    if not isinstance(raw, dict):
        raise BastionError("not a mapping")
    cfg = parse_config(raw)
    for s in cfg.section_dicts():
        validate_section(s["kind"], s)
    for s in cfg.section_dicts():  # accepted configs hold only sane budgets
        for a in s.get("attacks") or []:
            if isinstance(a, dict):
                assert all(math.isfinite(e) and 0 <= e <= 1e8 for e in a.get("eps") or [])
                assert a.get("targeted") in (None, "most", "ll", "next", "random")


def _check(raw: Any) -> None:
    try:
        validate(raw)
        COUNT["accepted"] += 1
    except BastionError as e:
        assert str(e).strip(), "empty error message"


def _report(target: str, before: int) -> None:
    from test_fuzz_cli import _record

    ran = COUNT[target] - before
    print(f"fuzz config {target}: {ran} cases ({COUNT['accepted']} accepted so far)")
    _record(f"config {target}", ran)
    assert ran >= min(EXAMPLES, 50)


def test_fuzz_mutated_demo_config():
    @SETTINGS
    @given(cfg=mutated())
    def prop(cfg):
        COUNT["mutated"] += 1
        _check(cfg)

    before = COUNT["mutated"]
    prop()
    _report("mutated", before)


def test_fuzz_random_config():
    keys = st.sampled_from(["seed", "batch_size", "data", "sections", "bogus"])

    @SETTINGS
    @given(cfg=st.dictionaries(keys, VALUES, max_size=4))
    def prop(cfg):
        COUNT["random"] += 1
        _check(cfg)

    before = COUNT["random"]
    prop()
    _report("random", before)


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                    max_leaves=8)


def test_fuzz_checkpoint_metadata(small_model, tmp_path_factory):
    """Mutated `bastion` metadata (wrong JSON types, missing keys, NaN, huge shapes): loading
    either succeeds or raises CheckpointError, never anything else."""
    import json

    from safetensors.torch import load_file, save_file

    from bastion.core import CheckpointError
    from bastion.models import load_classifier, save_classifier

    d = tmp_path_factory.mktemp("fuzz-meta")
    good = save_classifier(d / "good.st", small_model, dataset="mnist-5k")
    state = load_file(str(good))
    from safetensors import safe_open
    with safe_open(str(good), framework="pt") as f:
        meta = json.loads(f.metadata()["bastion"])
    keys = ["arch", "num_classes", "input_spec", "arch_args", "name", "dataset"]
    spec_keys = ["shape", "bounds", "mean", "std"]
    count = {"n": 0, "loaded": 0}

    @settings(max_examples=EXAMPLES // 2, deadline=None, derandomize=not os.environ.get("BASTION_FUZZ_RANDOM"))
    @given(whole=st.one_of(st.none(), JSON), key=st.sampled_from(keys), spec_key=st.sampled_from(spec_keys),
           value=JSON, where=st.sampled_from(["top", "spec", "drop"]))
    def prop(whole, key, spec_key, value, where):
        m = copy.deepcopy(meta)
        if whole is not None and not isinstance(whole, dict):
            m = whole
        elif where == "top":
            m[key] = value
        elif where == "spec":
            m["input_spec"][spec_key] = value
        else:
            m.pop(key, None)
        path = d / f"m{count['n']}.st"
        save_file(state, str(path), metadata={"bastion": json.dumps(m)})
        count["n"] += 1
        try:
            load_classifier(path, device="cpu")
            count["loaded"] += 1
        except CheckpointError as e:
            assert str(e).strip()
        finally:
            path.unlink()

    prop()
    from test_fuzz_cli import _record
    print(f"fuzz checkpoint metadata: {count['n']} cases ({count['loaded']} loaded)")
    _record("checkpoint metadata", count["n"])
    assert count["n"] >= min(EXAMPLES // 2, 50)
