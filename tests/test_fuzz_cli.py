"""Property-based tests over the CLI arguments of every command (hypothesis).

Property: `bastion CMD ARGS...` ends with exit code 0 or 2; on 2, stderr carries an error
line and no traceback; the --out target is absent after a refusal (or complete after a
success). Long work is cut at the point where validation is over: the training loop, the
attack loop, shadow training and the audit's sections are replaced by a sentinel that
counts as "accepted" (exit 0). The number of cases run per command is printed (run with
-s) and written to .cache/fuzz-counts.json.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.cli.main import run

COUNTS: Counter[str] = Counter()
_ids = itertools.count()
# BASTION_FUZZ_EXAMPLES=N (and BASTION_FUZZ_RANDOM=1) widen a local exploration run.
EXAMPLES = int(os.environ.get("BASTION_FUZZ_EXAMPLES", "100"))
OUTCOMES: Counter[str] = Counter()
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    derandomize=not os.environ.get("BASTION_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Reached(Exception):
    """Raised in place of the long work: every check before it passed."""


def _reached(*_a, **_k):
    raise Reached


NUMBERS = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "nan", "inf", "-inf", "1e308", "1e-320", str(2**64),
                     str(-2**64), str(2**63), "0.5", "abc", "", "1,2", "0x10", "3"]),
    st.integers(min_value=-10**25, max_value=10**25).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
STRINGS = st.one_of(
    st.sampled_from(["", " ", ".", "..", "/", "/dev/null", "/proc/x", "a" * 300, "a/" * 3000,
                     "../../etc/passwd", "x\x00y", "ünïcødé", "💥", "cpu", "cuda", "cuda:99", "meta",
                     "cpu,cuda", "auto", "pgd", "fgsm", "most", "mnist-5k", "-", "--help", "[red]x[/]"]),
    st.text(max_size=30),
)
VALUES = st.one_of(NUMBERS, STRINGS)


def _value(kind: str) -> st.SearchStrategy[str]:
    return {"num": st.one_of(NUMBERS, NUMBERS, STRINGS), "str": st.one_of(STRINGS, NUMBERS),
            "any": VALUES}[kind]


# command -> (fixed arguments, fuzzed options: flag -> kind)
COMMON = {"--seed": "num", "--device": "str", "--root": "str"}
COMMANDS: dict[str, tuple[list[str], dict[str, str]]] = {
    "attack": (["-m", "{model}"], {"--attack": "str", "--data": "str", "--norm": "str", "--eps": "num",
                                    "--targeted": "str", "--n": "num", "--arg": "any", "--out": "str",
                                    **COMMON}),
    "train": (["--out", "{out}.st"], {"--model": "str", "--data": "str", "--epochs": "num",
                                     "--batch-size": "num", "--lr": "num", "--optimizer": "str",
                                     "--patience": "num", "--arg": "any", "--out": "str", "--sigma": "num",
                                     "--clip": "num", "--delta": "num", "--dynamic": "str", "--decay": "str",
                                     "--target-eps": "num", "--target-acc": "num", "--steps": "num",
                                     "--accountant": "str", **COMMON}),
    "audit": (["-m", "{model}", "--out", "{out}"], {"--data": "str", "--config": "str", "--n": "num",
                                                    "--out": "str", **COMMON}),
    "leak": (["-m", "{model}"], {"--data": "str", "--split": "str", "--attack": "str", "--init": "str",
                                  "--batch": "num", "--defense": "str", "--n": "num", "--max-iter": "num",
                                  "--arg": "any", "--out": "str", **COMMON}),
    "mia": (["-m", "{model}"], {"--data": "str", "--attack": "str", "--shadows": "num",
                                 "--attacker-data": "str", "--cache": "str", "--eval-size": "num",
                                 "--members": "str", "--nonmembers": "str", "--augment": "str",
                                 "--variance": "str", "--shadow-epochs": "num", "--method": "str",
                                 "--pool-size": "num", "--out": "str", **COMMON}),
    "privacy epsilon": (["--q", "0.01", "--sigma", "1", "--steps", "10"], {"--q": "num", "--sigma": "num", "--steps": "num", "--delta": "num"}),
    "privacy sigma": (["--target-eps", "1", "--q", "0.01", "--steps", "10"], {"--target-eps": "num", "--q": "num", "--steps": "num", "--delta": "num",
                           "--accountant": "str"}),
    "defend": (["-m", "{model}", "--defense", "median", "--out", "{out}.st"],
               {"--defense": "str", "--params": "any", "--data": "str", "--calib-n": "num", "--fit-n": "num",
                "--eot-samples": "num", "--n": "num", "--out": "str", **COMMON}),
    "certify": (["-m", "{model}", "--samples", "10", "--n", "2"],
                {"--method": "str", "--sigma": "num", "--samples": "num", "--n0": "num", "--alpha": "num",
                 "--radii": "any", "--eps": "any", "--draws": "num", "--eta": "num", "--batch-size": "num",
                 "--n": "num", "--data": "str", "--out": "str", "--denoise-epochs": "num",
                 "--denoise-objective": "str", **COMMON}),
    "pool build": ([], {"--config": "str", "--out": "str", "--device": "str", "--threads": "num"}),
    "info": (["{model}"], {}),
    "attacks": ([], {}),
    "models": ([], {}),
    "datasets": ([], {}),
}


@pytest.fixture(scope="module")
def model_path(small_model, tmp_path_factory) -> Path:
    from bastion.models import save_classifier

    path = tmp_path_factory.mktemp("fuzz-model") / "cnn-small.st"
    save_classifier(path, small_model, dataset="mnist-5k")
    return path


@pytest.fixture
def cheap(monkeypatch):
    """Replace every long phase by the sentinel (validation before it runs for real)."""
    import bastion.attacks.privacy.membership as mia
    import bastion.attacks.registry as registry
    import bastion.audit.leakage_section as leakage
    import bastion.audit.runner as runner
    import bastion.defenses.certify.run as certify_run
    import bastion.defenses.ensemble.pool as pool
    import bastion.training.dp as dp
    import bastion.training.pipeline as pipeline
    from bastion.attacks.base import Attack

    monkeypatch.setattr(pipeline, "fit", _reached)
    monkeypatch.setattr(pool, "build_pool", _reached)
    monkeypatch.setattr(dp, "train_dp", _reached)
    monkeypatch.setattr(pipeline, "load", _tiny_load)
    monkeypatch.setattr(leakage, "attack_examples", _reached)
    monkeypatch.setattr(mia, "audit_membership", _reached)
    monkeypatch.setattr(runner, "RunStore", _reached)
    monkeypatch.setattr(certify_run, "run_certify", _reached)
    monkeypatch.setattr(Attack, "__call__", _reached)
    monkeypatch.setattr(registry, "LIMITS", {k: min(v, 50) for k, v in registry.LIMITS.items()})


def _tiny_load(name, split, root=None):
    from bastion.data import load
    return load(name, split, root=root).take(64)


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = run(argv)
        except Reached:
            rc = 0
    return rc, err.getvalue()


def check_outcome(argv: list[str], rc: int, err: str, outs: list[Path]) -> None:
    assert rc in (0, 2), f"exit {rc} for {argv}:\n{err[-2000:]}"
    assert "Traceback" not in err, f"traceback for {argv}:\n{err[-2000:]}"
    if rc == 2:
        assert err.strip(), f"exit 2 without a message for {argv}"
        # Bastion's refusals and the parser's usage errors alike: exactly one error line
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
        assert len(lines) == 1 and lines[0].startswith("error:"), f"not one error line for {argv}:\n{err[-2000:]}"
        for o in outs:
            assert not o.exists() or (o.is_dir() and not any(o.iterdir())), f"{o} left behind for {argv}"


def _argv(cmd: str, data: st.DataObject, model: Path, tmp: Path) -> tuple[list[str], list[Path]]:
    fixed, options = COMMANDS[cmd]
    base = tmp / f"case{next(_ids)}"
    argv = cmd.split() + [a.format(model=model, out=base) for a in fixed]
    outs = [base.with_suffix(".st"), base] if "{out}" in "".join(fixed) else []
    chosen = data.draw(st.lists(st.sampled_from(sorted(options)), max_size=5, unique=True)) if options else []
    for flag in chosen:
        v = data.draw(_value(options[flag]), label=flag)
        if flag == "--out" and data.draw(st.booleans(), label="out-in-tmp"):
            v = str(tmp / f"o{next(_ids)}" / v.replace("\x00", "").lstrip("/")[:50]) + data.draw(
                st.sampled_from(["", ".npz", ".st", "/"]), label="suffix")
            outs.append(Path(v))
        if flag == "--arg":
            v = data.draw(st.sampled_from(["steps", "eps", "alpha", "restarts", "norm", "bogus", "", "lr",
                                           "width", "max_iter", "hidden", "depth", "channels", "activation",
                                           "dropout"]), label="key") + "=" + v
        if flag == "--model" and cmd == "train" and data.draw(st.booleans(), label="zoo"):
            v = data.draw(st.sampled_from(["mlp", "resnet", "cnn-small", "lenet", "cnn7"]), label="arch")
        argv += [flag, v]
    if cmd == "attack" and "--n" not in chosen:
        argv += ["--n", "2"]
    return argv, outs


def _fuzz(cmd: str, model: Path, tmp: Path, data: st.DataObject) -> None:
    argv, outs = _argv(cmd, data, model, tmp)
    outs = [o for o in outs if not o.exists()]  # only what this run could have created
    rc, err = _run(argv)
    COUNTS[cmd] += 1
    OUTCOMES[f"{cmd}: " + ("ok" if rc == 0 else "usage" if "--help')" in err else
                           "refused" if rc == 2 else str(rc))] += 1
    check_outcome(argv, rc, err, outs)


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_fuzz_command(cmd, model_path, tmp_path, cheap):
    @SETTINGS
    @given(data=st.data())
    def prop(data):
        _fuzz(cmd, model_path, tmp_path, data)

    before = COUNTS[cmd]
    prop()
    ran = COUNTS[cmd] - before
    print(f"fuzz cli {cmd!r}: {ran} cases;", {k: v for k, v in OUTCOMES.items() if k.startswith(cmd + ":")})
    _record(f"cli {cmd}", ran)
    assert ran >= (1 if not COMMANDS[cmd][1] else 20)


def _record(target: str, n: int) -> None:
    path = Path(__file__).resolve().parents[1] / ".cache" / "fuzz-counts.json"
    try:
        counts = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        counts = {}
    counts[target] = n
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(counts, indent=1, sort_keys=True))


def test_sentinel_is_reached_for_valid_arguments(model_path, tmp_path, cheap):
    """The fuzz harness can tell acceptance from refusal: valid arguments reach the work."""
    rc, err = _run(["train", "--out", str(tmp_path / "m.st"), "--epochs", "1"])
    assert rc == 0 and "Traceback" not in err
    rc, err = _run(["train", "--out", str(tmp_path / "m.st"), "--epochs", "0"])
    assert rc == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1
