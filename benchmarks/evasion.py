"""Evasion-attack speed against a bare PyTorch loop and the peer libraries.

Same model (cnn-small trained 3 epochs on mnist-5k, the test suite's cached victim), same
correctly classified test images, same seed, on CPU (and CUDA when available):

* pgd:      PGD-40 Linf eps 0.3 and APGD-CE 40 steps vs a bare forward+backward loop of
            40 steps; torchattacks, Foolbox and ART PGD, torchattacks APGD.
* paired:   the same PGD-40 / APGD-CE cases as paired ratios: each pair runs a bare loop and
            one attack back to back on a small batch (order alternating), many times; the
            median of the per-pair ratios is robust to the slow load drift of a shared machine
            that makes min-of-3 runs of several seconds differ by 40%.
* cw:       C&W L2 vs torchattacks CW at the same optimiser budget (c, lr, steps); time,
            success and mean L2.
* hsj:      HopSkipJump L2 vs ART at the same parameters (iterations, max/init evals),
            i.e. the same query budget; examples per second and median L2.
* ensemble: the worst-case ensemble ('autoattack') vs torchattacks' AutoAttack
            (standard, Linf): robust accuracy and time.
* autoattack: the ensemble at its defaults (the paper's: APGD-CE and APGD-T with 100 steps,
            9 target classes, Square with 5,000 queries) vs torchattacks' AutoAttack
            'standard' on the same images at several Linf budgets, back to back with the
            order alternating between rounds: time ratio and robust accuracies.
* memory:   extra resident memory of PGD-5 and HopSkipJump (1 iteration) while attacking
            1x, 4x and 16x the examples (batch size 100), each in a fresh process.
* gpu:      CUDA only (`--device cuda`; skipped with a message otherwise): PGD-10 Linf on
            ResNet-20 (CIFAR shape, batch 256, --gpu-batches batches per call) eager vs the
            CUDA-graph fast path (fp32, and bf16 autocast) vs torchattacks and Foolbox; the
            fp32 graph result is compared with the eager one element by element.

Prints ratios and writes benchmarks/results/evasion.json. Peers that are not installed
are skipped. Example:

    python benchmarks/evasion.py --threads 1 --n 500 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def victim(device: str) -> Any:
    from conftest import _train_cached  # the test suite's cached model

    model = _train_cached("cnn-small", epochs=3)
    return model.to(device)


def images(model: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from bastion.data import load

    test = load("mnist-5k", "test")
    pred = model.predict(test.x)
    idx = torch.nonzero(pred.cpu() == test.y).flatten()[:n]
    dev = model.device
    return test.x[idx].to(dev), test.y[idx].to(dev)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timeit(fn: Callable[[], Any], dev: torch.device) -> tuple[float, Any]:
    t, _, out = timeit2(fn, dev)
    return t, out


def timeit2(fn: Callable[[], Any], dev: torch.device) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, output). With one torch thread the CPU
    time is the work done and barely moves when other jobs share the cores, while the wall
    time includes waiting for a core."""
    sync(dev)
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - t, time.process_time() - c, out


def run_rounds(cases: dict[str, Callable[[], Any]], repeats: int, dev: torch.device
               ) -> dict[str, dict[str, Any]]:
    """Round-robin over the cases, rotating the order each round, so load drift and
    first-call effects hit all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    outs: dict[str, Any] = {}
    keys = list(cases)
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            fn = cases[k]
            t, c, out = timeit2(fn, dev)
            times[k].append(t)
            cpu[k].append(c)
            outs[k] = out
            print(f"  [{r + 1}/{repeats}] {k:24s} {t:8.3f} s wall {c:8.3f} s cpu", flush=True)
    return {k: {"times_s": v, "min_s": min(v), "median_s": statistics.median(v),
                "spread": (max(v) - min(v)) / min(v), "cpu_s": cpu[k], "cpu_min_s": min(cpu[k]),
                "cpu_median_s": statistics.median(cpu[k]), "out": outs[k]}
            for k, v in times.items()}


def ratio_table(res: dict[str, dict[str, Any]], base: str) -> dict[str, dict[str, float]]:
    b_min, b_med = res[base]["min_s"], res[base]["median_s"]
    c_min, c_med = res[base]["cpu_min_s"], res[base]["cpu_median_s"]
    return {k: {"min_ratio": v["min_s"] / b_min, "median_ratio": v["median_s"] / b_med,
                "cpu_min_ratio": v["cpu_min_s"] / c_min,
                "cpu_median_ratio": v["cpu_median_s"] / c_med}
            for k, v in res.items()}


# --------------------------------------------------------------------------- PGD / APGD

def bare_pgd(model: Any, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, passes: int,
             fast_layout: bool = False) -> torch.Tensor:
    """The textbook Linf PGD loop: random start, `passes` forward+backward passes, sign step,
    projection; in the attacks' layout (channels-last on CPU) when `fast_layout`."""
    def loop() -> torch.Tensor:
        dev = x.device
        g0 = torch.Generator(device=dev).manual_seed(0)
        xa = (x + eps * (torch.rand(x.shape, generator=g0, device=dev) * 2 - 1)).clamp(0, 1)
        for _ in range(passes):
            xa.requires_grad_(True)
            loss = F.cross_entropy(model(xa), y)
            (g,) = torch.autograd.grad(loss, xa)
            xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
        return xa

    if not fast_layout:
        return loop()
    with model.fast_layout():
        return loop()


def bench_pgd(model: Any, x: torch.Tensor, y: torch.Tensor, repeats: int, steps: int = 40
              ) -> dict[str, Any]:
    from bastion.attacks.evasion import APGD, PGD

    eps, alpha = 0.3, 0.01
    dev = x.device

    def bare(passes: int = steps) -> torch.Tensor:
        return bare_pgd(model, x, y, eps, alpha, passes)

    def bare_fast(passes: int = steps) -> torch.Tensor:
        return bare_pgd(model, x, y, eps, alpha, passes, fast_layout=True)

    cases: dict[str, Callable[[], Any]] = {
        "bare_loop": bare,
        # APGD takes one more gradient (at the random start) than it has steps: its honest
        # baseline is a bare loop with the same number of forward+backward passes
        "bare_loop_41": lambda: bare(steps + 1),
        "bare_loop_fast_layout": bare_fast,
        "bare_loop_41_fast_layout": lambda: bare_fast(steps + 1),
        "bastion_pgd": lambda: PGD(eps=eps, alpha=alpha, steps=steps)(model, x, y).x_adv,
        "bastion_apgd": lambda: APGD(eps=eps, steps=steps)(model, x, y).x_adv,
    }
    try:
        import torchattacks
        cases["torchattacks_pgd"] = lambda: torchattacks.PGD(model, eps=eps, alpha=alpha,
                                                             steps=steps)(x, y)
        cases["torchattacks_apgd"] = lambda: torchattacks.APGD(model, norm="Linf", eps=eps,
                                                               steps=steps, seed=0)(x, y)
    except ImportError:
        pass
    try:
        import foolbox as fb
        fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=dev)
        fpgd = fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)
        cases["foolbox_pgd"] = lambda: fpgd(fmodel, x, y, epsilons=eps)[1]
    except ImportError:
        pass
    art_clf = _art_classifier(model, x)
    if art_clf is not None:
        import numpy as np
        from art.attacks.evasion import ProjectedGradientDescent
        apgd = ProjectedGradientDescent(art_clf, norm=np.inf, eps=eps, eps_step=alpha,
                                        max_iter=steps, num_random_init=1,
                                        batch_size=x.shape[0], verbose=False)
        xn = x.cpu().numpy()
        cases["art_pgd"] = lambda: torch.from_numpy(apgd.generate(xn)).to(dev)
    res = run_rounds(cases, repeats, dev)
    ratios = ratio_table(res, "bare_loop")
    apgd_ratios = {k: v for k, v in ratio_table(res, "bare_loop_41").items() if "apgd" in k}
    same_layout = {k: v for k, v in ratio_table(res, "bare_loop_fast_layout").items()
                   if k == "bastion_pgd"}
    same_layout.update({k: v for k, v in ratio_table(res, "bare_loop_41_fast_layout").items()
                        if k == "bastion_apgd"})
    robust = {k: float((model.predict(v["out"]) == y).float().mean()) for k, v in res.items()}
    return {"n": int(x.shape[0]), "steps": steps, "eps": eps,
            "cases": {k: {kk: vv for kk, vv in v.items() if kk != "out"} for k, v in res.items()},
            "ratios_vs_bare": ratios, "apgd_ratios_vs_bare_41_passes": apgd_ratios,
            "bastion_ratios_vs_bare_same_layout": same_layout,
            "robust_accuracy": robust}


def _art_classifier(model: Any, x: torch.Tensor) -> Any:
    try:
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return None

    class F32(torch.nn.Module):  # ART hands float64 arrays to the model in some paths
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.m(z.float())

    return PyTorchClassifier(model=F32(model), loss=torch.nn.CrossEntropyLoss(),
                             input_shape=tuple(x.shape[1:]), nb_classes=10, clip_values=(0.0, 1.0),
                             device_type="gpu" if x.device.type == "cuda" else "cpu")


def bench_pgd_paired(model: Any, x: torch.Tensor, y: torch.Tensor, pairs: int, steps: int = 40
                     ) -> dict[str, Any]:
    """Median over `pairs` of time(attack) / time(bare loop), each pair run back to back."""
    from bastion.attacks.evasion import APGD, PGD

    eps, alpha = 0.3, 0.01
    dev = x.device

    def bare(passes: int, fast_layout: bool = False) -> Callable[[], torch.Tensor]:
        return lambda: bare_pgd(model, x, y, eps, alpha, passes, fast_layout)

    # (name, candidate, baseline with the same number of forward+backward passes). Bastion
    # attacks run in the model's fast layout (channels-last on CPU): the '_same_layout'
    # pairs measure the attack's own overhead, the others what a user sees against the
    # default-layout loop they would write.
    cases: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        ("bastion_pgd", lambda: PGD(eps=eps, alpha=alpha, steps=steps)(model, x, y), bare(steps)),
        ("bastion_apgd", lambda: APGD(eps=eps, steps=steps)(model, x, y), bare(steps + 1)),
        ("bastion_pgd_same_layout", lambda: PGD(eps=eps, alpha=alpha, steps=steps)(model, x, y),
         bare(steps, True)),
        ("bastion_apgd_same_layout", lambda: APGD(eps=eps, steps=steps)(model, x, y),
         bare(steps + 1, True)),
    ]
    try:
        import torchattacks
        cases.append(("torchattacks_pgd", lambda: torchattacks.PGD(model, eps=eps, alpha=alpha,
                                                                   steps=steps)(x, y), bare(steps)))
        cases.append(("torchattacks_apgd", lambda: torchattacks.APGD(
            model, norm="Linf", eps=eps, steps=steps, seed=0)(x, y), bare(steps + 1)))
    except ImportError:
        pass
    ratios: dict[str, list[float]] = {k: [] for k, _, _ in cases}
    for _, cand, base in cases:  # warm-up
        cand()
        base()
    for r in range(pairs):
        for k, cand, base in cases:
            order = (base, cand) if r % 2 == 0 else (cand, base)
            t = [timeit(f, dev)[0] for f in order]
            tb, tc = (t[0], t[1]) if r % 2 == 0 else (t[1], t[0])
            ratios[k].append(tc / tb)
        print(f"  [{r + 1}/{pairs}] " + "  ".join(f"{k} x{v[-1]:.3f}" for k, v in ratios.items()),
              flush=True)
    out: dict[str, Any] = {"n": int(x.shape[0]), "steps": steps, "eps": eps, "pairs": pairs,
                           "baseline": "bare loop with the same forward+backward passes "
                                       "(40 for PGD, 41 for APGD), in the default layout or, "
                                       "for '_same_layout', in the model's fast layout",
                           "cases": {}}
    for k, v in ratios.items():
        q = statistics.quantiles(v, n=4) if len(v) >= 2 else [v[0]] * 3
        out["cases"][k] = {"median_ratio": statistics.median(v), "q1": q[0], "q3": q[2],
                           "ratios": v}
    return out


# --------------------------------------------------------------------------- C&W

def bench_cw(model: Any, x: torch.Tensor, y: torch.Tensor, repeats: int) -> dict[str, Any]:
    from bastion.attacks.evasion import CarliniWagnerL2

    c, lr, steps = 10.0, 0.1, 100
    dev = x.device
    cases: dict[str, Callable[[], Any]] = {
        "bastion_cw_l2": lambda: CarliniWagnerL2(binary_search_steps=1, initial_const=c, lr=lr,
                                                 max_iter=steps)(model, x, y).x_adv,
    }
    try:
        import torchattacks
        cases["torchattacks_cw"] = lambda: torchattacks.CW(model, c=c, kappa=0, steps=steps,
                                                           lr=lr)(x, y)
    except ImportError:
        pass
    res = run_rounds(cases, repeats, dev)
    # the paper-style search (5 x 100 steps from c = 1) once, for the record
    t, r = timeit(lambda: CarliniWagnerL2.fast()(model, x, y), dev)
    summary = {}
    for k, v in res.items():
        xa = v["out"]
        ok = model.predict(xa) != y
        l2 = (xa - x).flatten(1).norm(dim=1)
        summary[k] = {"success": float(ok.float().mean()),
                      "mean_l2_success": float(l2[ok].mean()) if bool(ok.any()) else None,
                      "min_s": v["min_s"], "median_s": v["median_s"], "times_s": v["times_s"],
                      "cpu_min_s": v["cpu_min_s"], "cpu_s": v["cpu_s"]}
    summary["bastion_cw_l2_fast_preset"] = {
        "success": r.success_rate, "mean_l2_success": float(r.norms["l2"][r.success].mean()),
        "min_s": t, "median_s": t, "times_s": [t], "note": "5 binary steps x 100, lr 0.1, c0 1"}
    out: dict[str, Any] = {"n": int(x.shape[0]), "c": c, "lr": lr, "steps": steps, "cases": summary}
    if "torchattacks_cw" in res:
        out["time_ratio_vs_torchattacks"] = (res["bastion_cw_l2"]["min_s"]
                                             / res["torchattacks_cw"]["min_s"])
        out["cpu_time_ratio_vs_torchattacks"] = (res["bastion_cw_l2"]["cpu_min_s"]
                                                 / res["torchattacks_cw"]["cpu_min_s"])
    return out


# --------------------------------------------------------------------------- HopSkipJump

def bench_hsj(model: Any, x: torch.Tensor, y: torch.Tensor, repeats: int, iters: int,
              init_evals: int = 100, max_evals: int = 10000) -> dict[str, Any]:
    from bastion.attacks.evasion import HopSkipJump

    dev = x.device
    cases: dict[str, Callable[[], Any]] = {
        "bastion_hsj": lambda: HopSkipJump(max_iter=iters, init_evals=init_evals,
                                           max_evals=max_evals)(model, x, y),
    }
    art_clf = _art_classifier(model, x)
    if art_clf is not None:
        import numpy as np
        from art.attacks.evasion import HopSkipJump as ArtHSJ

        def art_run() -> torch.Tensor:
            np.random.seed(0)
            a = ArtHSJ(art_clf, targeted=False, norm=2, max_iter=iters, max_eval=max_evals,
                       init_eval=init_evals, init_size=100, batch_size=64, verbose=False)
            return torch.from_numpy(a.generate(x.cpu().numpy())).to(dev)
        cases["art_hsj"] = art_run
    # count the model's forward calls and the images through them: at an equal query budget
    # the images are about equal, the calls show how batched each implementation is
    counts = {k: [0, 0] for k in cases}
    current = [""]

    def hook(_m: Any, inp: Any, _o: Any) -> None:
        counts[current[0]][0] += 1
        counts[current[0]][1] += int(inp[0].shape[0])

    def counted(k: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            current[0] = k
            return fn()
        return run

    handle = model.register_forward_hook(hook)
    try:
        res = run_rounds({k: counted(k, f) for k, f in cases.items()}, repeats, dev)
    finally:
        handle.remove()
    summary = {}
    for k, v in res.items():
        xa = v["out"].x_adv if hasattr(v["out"], "x_adv") else v["out"]
        ok = model.predict(xa) != y
        l2 = (xa - x).flatten(1).norm(dim=1)
        summary[k] = {"success": float(ok.float().mean()),
                      "median_l2": float(l2[ok].median()) if bool(ok.any()) else None,
                      "examples_per_s": x.shape[0] / v["min_s"],
                      "examples_per_cpu_s": x.shape[0] / v["cpu_min_s"],
                      "forward_calls_per_run": counts[k][0] / repeats,
                      "images_forwarded_per_example": counts[k][1] / repeats / x.shape[0],
                      "min_s": v["min_s"], "median_s": v["median_s"], "times_s": v["times_s"],
                      "cpu_min_s": v["cpu_min_s"], "cpu_s": v["cpu_s"]}
    q = res["bastion_hsj"]["out"].queries
    summary["bastion_hsj"]["queries_mean"] = float(q.mean())
    out: dict[str, Any] = {"n": int(x.shape[0]), "iterations": iters, "init_evals": init_evals,
                           "max_evals": max_evals, "cases": summary}
    if "art_hsj" in res:
        out["throughput_ratio_vs_art"] = res["art_hsj"]["min_s"] / res["bastion_hsj"]["min_s"]
        out["throughput_ratio_vs_art_cpu"] = (res["art_hsj"]["cpu_min_s"]
                                              / res["bastion_hsj"]["cpu_min_s"])
    return out


# --------------------------------------------------------------------------- ensemble

def bench_ensemble(model: Any, x: torch.Tensor, y: torch.Tensor, eps: float) -> dict[str, Any]:
    """torchattacks' AutoAttack 'standard' runs APGD-CE and APGD-T with its own default of
    10 steps (FAB-T 10 steps, Square 5000 queries); the comparison at the same budget is our
    ensemble with steps=10. The paper's 100 steps are measured too, for the record."""
    from bastion.attacks import create

    dev = x.device
    out: dict[str, Any] = {"n": int(x.shape[0]), "eps": eps}
    for key, steps in (("bastion_ensemble", 10), ("bastion_ensemble_100_steps", 100)):
        t, c, r = timeit2(lambda s=steps: create("autoattack", eps=eps, steps=s)(model, x, y), dev)
        out[key] = {"steps": steps, "square_queries": 5000, "robust_accuracy": r.robust_accuracy,
                    "time_s": t, "cpu_s": c, "robust_after": r.extras.get("robust_after")}
        print(f"  bastion ensemble ({steps} steps) {t:8.2f} s robust {r.robust_accuracy:.3f}",
              flush=True)
    r_rob, t = out["bastion_ensemble"]["robust_accuracy"], out["bastion_ensemble"]["time_s"]
    c = out["bastion_ensemble"]["cpu_s"]
    try:
        import torchattacks
    except ImportError:
        return out
    aa = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10,
                                 seed=0)
    t2, c2, xa = timeit2(lambda: aa(x, y), dev)
    rob = float((model.predict(xa) == y).float().mean())
    out["torchattacks_autoattack"] = {"robust_accuracy": rob, "time_s": t2, "cpu_s": c2,
                                      "steps": 10, "square_queries": 5000}
    out["robust_accuracy_gap_points"] = 100 * (r_rob - rob)
    out["time_ratio"] = t / t2
    out["cpu_time_ratio"] = c / c2
    print(f"  torchattacks AutoAttack {t2:8.2f} s robust {rob:.3f}", flush=True)
    return out


def bench_autoattack(model: Any, x: torch.Tensor, y: torch.Tensor, epsilons: list[float],
                     repeats: int) -> dict[str, Any]:
    """Bastion's 'autoattack' with its defaults against torchattacks' AutoAttack 'standard'
    (APGD-CE, APGD-T, FAB-T at torchattacks' default of 10 steps, Square with 5,000
    queries), same model and images, for each Linf eps. Each round runs both back to back;
    the order alternates between rounds so load drift on a shared machine hits both alike.
    Robust accuracy is judged by one plain forward pass on each returned batch."""
    from bastion.attacks import create

    dev = x.device
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
    out: dict[str, Any] = {"n": int(x.shape[0]), "norm": "linf", "repeats": repeats,
                           "bastion_params": {"steps": 100, "n_target_classes": 9,
                                              "square_queries": 5000, "restarts": 1},
                           "torchattacks_params": None if torchattacks is None else {
                               "version": "standard", "steps": 10, "square_queries": 5000},
                           "cases": {}}

    def robust(xa: torch.Tensor) -> float:
        return float((model.predict(xa) == y).float().mean())

    for eps in epsilons:
        runs: dict[str, Callable[[], Any]] = {
            "bastion": lambda e=eps: create("autoattack", eps=e)(model, x, y)}
        if torchattacks is not None:
            runs["torchattacks"] = lambda e=eps: torchattacks.AutoAttack(
                model, norm="Linf", eps=e, version="standard", n_classes=10, seed=0)(x, y)
        times: dict[str, list[float]] = {k: [] for k in runs}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        rob: dict[str, float] = {}
        after: dict[str, Any] = {}
        keys = list(runs)
        for r in range(repeats):
            for k in keys if r % 2 == 0 else keys[::-1]:
                t, c, res = timeit2(runs[k], dev)
                times[k].append(t)
                cpu[k].append(c)
                rob[k] = robust(res.x_adv if k == "bastion" else res)
                if k == "bastion":
                    after = res.extras.get("robust_after", {})
                print(f"  eps {eps:g} [{r + 1}/{repeats}] {k:12s} {t:8.2f} s wall {c:8.2f} s cpu "
                      f"robust {rob[k]:.3f}", flush=True)
        case: dict[str, Any] = {
            k: {"times_s": times[k], "min_s": min(times[k]), "median_s": statistics.median(times[k]),
                "cpu_s": cpu[k], "cpu_min_s": min(cpu[k]), "robust_accuracy": rob[k]}
            for k in runs}
        case["bastion"]["robust_after"] = after
        if "torchattacks" in runs:
            b, t = case["bastion"], case["torchattacks"]
            case["time_ratio_min"] = b["min_s"] / t["min_s"]
            case["time_ratio_median"] = b["median_s"] / t["median_s"]
            case["cpu_time_ratio_min"] = b["cpu_min_s"] / t["cpu_min_s"]
            case["robust_accuracy_gap_points"] = 100 * (b["robust_accuracy"] - t["robust_accuracy"])
            print(f"  eps {eps:g}: time bastion/torchattacks x{case['time_ratio_min']:.2f} (min) "
                  f"x{case['time_ratio_median']:.2f} (median); robust accuracy bastion "
                  f"{b['robust_accuracy']:.3f} torchattacks {t['robust_accuracy']:.3f}", flush=True)
        out["cases"][f"{eps:g}"] = case
    return out


# --------------------------------------------------------------------------- GPU fast path

def bench_gpu(device: str, repeats: int, batches: int, batch: int = 256, steps: int = 10
              ) -> dict[str, Any]:
    if device != "cuda" or not torch.cuda.is_available():
        msg = "skipped: no CUDA device (run with --device cuda on a GPU machine)"
        print(f"  {msg}", flush=True)
        return {"skipped": msg}
    from bastion.attacks.evasion import PGD
    from bastion.core import InputSpec
    from bastion.models import build_classifier

    torch.manual_seed(0)
    model = build_classifier("resnet", InputSpec((3, 32, 32)), 10, {"depth": 20}, device="cuda")
    n = batch * batches
    x = torch.rand(n, 3, 32, 32, device="cuda")
    y = model.predict(x)
    dev = x.device
    eps, alpha = 8 / 255, 2 / 255
    kw = {"eps": eps, "alpha": alpha, "steps": steps, "batch_size": batch}

    def bare() -> torch.Tensor:
        outs = []
        for i in range(0, n, batch):
            xb, yb = x[i:i + batch], y[i:i + batch]
            xa = (xb + eps * (torch.rand_like(xb) * 2 - 1)).clamp(0, 1)
            for _ in range(steps):
                xa.requires_grad_(True)
                (g,) = torch.autograd.grad(F.cross_entropy(model(xa), yb), xa)
                xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), xb - eps),
                               xb + eps).clamp(0, 1)
            outs.append(xa)
        return torch.cat(outs)

    cases: dict[str, Callable[[], Any]] = {
        "bare_loop": bare,
        "bastion_eager": lambda: PGD(**kw)(model, x, y).x_adv,
        "bastion_graph": lambda: PGD(fast_path="cuda-graph", **kw)(model, x, y).x_adv,
        "bastion_graph_bf16": lambda: PGD(fast_path="cuda-graph", bf16=True, **kw)(model, x, y).x_adv,
    }
    try:
        import torchattacks

        def ta() -> torch.Tensor:
            atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps)
            return torch.cat([atk(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)])
        cases["torchattacks_pgd"] = ta
    except ImportError:
        pass
    try:
        import foolbox as fb
        fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=dev)
        fpgd = fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)
        cases["foolbox_pgd"] = lambda: torch.cat([fpgd(fmodel, x[i:i + batch], y[i:i + batch],
                                                       epsilons=eps)[1]
                                                  for i in range(0, n, batch)])
    except ImportError:
        pass
    for fn in cases.values():  # one untimed call each: cuDNN autotuning, lazy init
        fn()
    res = run_rounds(cases, repeats, dev)
    eager, graph = res["bastion_eager"]["out"], res["bastion_graph"]["out"]
    out: dict[str, Any] = {
        "model": "resnet-20 (random weights; speed does not depend on training)",
        "n": n, "batch": batch, "steps": steps, "eps": eps, "gpu": torch.cuda.get_device_name(),
        "cases": {k: {kk: vv for kk, vv in v.items() if kk != "out"} for k, v in res.items()},
        "ratios_vs_eager": ratio_table(res, "bastion_eager"),
        "graph_fp32_vs_eager": {"max_abs_diff": float((graph - eager).abs().max()),
                                "fraction_equal": float((graph == eager).float().mean())},
    }
    if "torchattacks_pgd" in res:
        out["speedup_vs_torchattacks"] = {
            k: res["torchattacks_pgd"]["min_s"] / res[k]["min_s"]
            for k in ("bastion_eager", "bastion_graph", "bastion_graph_bf16")}
    for k, v in out["ratios_vs_eager"].items():
        print(f"  {k:24s} x{v['min_ratio']:.3f} of eager (min)", flush=True)
    return out


# --------------------------------------------------------------------------- memory

def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: fall back to the lifetime peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_probe(kind: str, n: int, device: str) -> dict[str, Any]:
    """Runs in a child process: the attack's extra resident memory (sampled every 5 ms)
    and, on CUDA, its peak allocated GPU memory, for n inputs at batch size 100."""
    import threading

    from bastion.attacks.evasion import PGD, HopSkipJump

    model = victim(device)
    x, y = images(model, n)
    reps = -(-n // x.shape[0])
    x, y = x.repeat(reps, 1, 1, 1)[:n], y.repeat(reps)[:n]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = _rss_mb()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    if kind == "pgd":
        PGD(eps=0.3, steps=5, batch_size=100)(model, x, y)
    else:
        HopSkipJump(max_iter=1, init_evals=50, batch_size=100)(model, x, y)
    stop.set()
    th.join()
    out = {"kind": kind, "n": n, "rss_before_mb": base, "rss_extra_mb": peak[0] - base,
           "inputs_mb": x.numel() * 4 / 2**20}
    if device == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def bench_memory(device: str, threads: int) -> dict[str, Any]:
    rows = []
    sizes = {"pgd": (200, 800, 3200), "hsj": (100, 400, 1600)}
    for kind in ("pgd", "hsj"):
        for n in sizes[kind]:
            cmd = [sys.executable, __file__, "--memory-probe", kind, str(n), "--device", device,
                   "--threads", str(threads)]
            p = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(p.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"  memory {kind} n={n}: extra RSS during the attack {row['rss_extra_mb']:.1f} MB "
                  f"(inputs {row['inputs_mb']:.1f} MB)"
                  + (f", CUDA {row['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in row else ""),
                  flush=True)
    growth = {}
    for kind in ("pgd", "hsj"):
        a, _, b = (r for r in rows if r["kind"] == kind)
        growth[kind] = b["rss_extra_mb"] / max(a["rss_extra_mb"], 1e-3)
    return {"rows": rows, "extra_rss_ratio_16x_examples": growth,
            "note": "batch size 100; flat = the extra memory stops growing with the examples "
                    "beyond the inputs' and outputs' own size"}


# --------------------------------------------------------------------------- main

SECTIONS = ("pgd", "paired", "cw", "hsj", "ensemble", "autoattack", "memory", "gpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="images for PGD/APGD")
    ap.add_argument("--n-paired", type=int, default=100, help="images per pair in 'paired'")
    ap.add_argument("--pairs", type=int, default=15, help="pairs per case in 'paired'")
    ap.add_argument("--n-cw", type=int, default=100)
    ap.add_argument("--n-hsj", type=int, default=20)
    ap.add_argument("--hsj-iters", type=int, default=10)
    ap.add_argument("--n-ensemble", type=int, default=100)
    ap.add_argument("--ensemble-eps", type=float, default=0.1)
    ap.add_argument("--n-autoattack", type=int, default=200)
    ap.add_argument("--autoattack-eps", default="0.1,0.2", help="comma-separated Linf budgets")
    ap.add_argument("--autoattack-repeats", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: keep default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--gpu-batches", type=int, default=8,
                    help="batches of 256 per call in the GPU section")
    ap.add_argument("--only", default="pgd,paired,cw,hsj,ensemble,autoattack,memory,gpu",
                    help="comma-separated sections: pgd, paired, cw, hsj, ensemble, autoattack, "
                         "memory, gpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "evasion.json"))
    ap.add_argument("--memory-probe", nargs=2, metavar=("KIND", "N"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("BASTION_QUIET", "1")
    from bastion.core import resolve_device, seed_everything
    device = str(resolve_device(args.device))
    seed_everything(0)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe[0], int(args.memory_probe[1]), device)))
        return
    only = set(args.only.split(","))
    load1 = os.getloadavg()[0]
    model = victim(device)
    result: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/evasion.py", *sys.argv[1:]]),
        "device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average_at_start": load1, "peers": _peer_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if "pgd" in only:
        print("PGD-40 / APGD vs bare loop", flush=True)
        x, y = images(model, args.n)
        result["pgd"] = bench_pgd(model, x, y, args.repeats)
        for k, v in [*result["pgd"]["ratios_vs_bare"].items(),
                     *((f"{k} / bare_41", v)
                       for k, v in result["pgd"]["apgd_ratios_vs_bare_41_passes"].items()),
                     *((f"{k} / same layout", v)
                       for k, v in result["pgd"]["bastion_ratios_vs_bare_same_layout"].items())]:
            print(f"  {k:24s} wall x{v['min_ratio']:.3f} (min) x{v['median_ratio']:.3f} (median)"
                  f"  cpu x{v['cpu_min_ratio']:.3f} (min) x{v['cpu_median_ratio']:.3f} (median)")
    if "paired" in only:
        print(f"PGD-40 / APGD paired ratios ({args.pairs} pairs, {args.n_paired} images)", flush=True)
        x, y = images(model, args.n_paired)
        result["paired"] = bench_pgd_paired(model, x, y, args.pairs)
        for k, v in result["paired"]["cases"].items():
            print(f"  {k:20s} median x{v['median_ratio']:.3f}  (quartiles {v['q1']:.3f}-{v['q3']:.3f})")
    if "cw" in only:
        print("C&W L2 vs torchattacks", flush=True)
        x, y = images(model, args.n_cw)
        result["cw"] = bench_cw(model, x, y, args.repeats)
        for k, v in result["cw"]["cases"].items():
            print(f"  {k:28s} success {v['success']:.3f} mean L2 {v['mean_l2_success']:.3f} "
                  f"min {v['min_s']:.2f} s")
        if "time_ratio_vs_torchattacks" in result["cw"]:
            print(f"  time ratio bastion/torchattacks x{result['cw']['time_ratio_vs_torchattacks']:.3f}")
    if "hsj" in only:
        print("HopSkipJump vs ART", flush=True)
        x, y = images(model, args.n_hsj)
        result["hsj"] = bench_hsj(model, x, y, max(1, args.repeats - 1), args.hsj_iters)
        for k, v in result["hsj"]["cases"].items():
            print(f"  {k:16s} {v['examples_per_s']:.3f} ex/s median L2 {v['median_l2']:.3f} "
                  f"success {v['success']:.2f} forward calls {v['forward_calls_per_run']:.0f} "
                  f"images/example {v['images_forwarded_per_example']:.0f}")
        if "throughput_ratio_vs_art" in result["hsj"]:
            print(f"  throughput ratio bastion/ART x{result['hsj']['throughput_ratio_vs_art']:.2f}")
    if "ensemble" in only:
        print("Worst-case ensemble vs torchattacks AutoAttack", flush=True)
        x, y = images(model, args.n_ensemble)
        result["ensemble"] = bench_ensemble(model, x, y, args.ensemble_eps)
    if "autoattack" in only:
        print(f"AutoAttack at its defaults vs torchattacks AutoAttack standard "
              f"({args.n_autoattack} images)", flush=True)
        x, y = images(model, args.n_autoattack)
        result["autoattack"] = bench_autoattack(
            model, x, y, [float(e) for e in args.autoattack_eps.split(",")],
            args.autoattack_repeats)
    if "memory" in only:
        print("Memory vs number of examples", flush=True)
        result["memory"] = bench_memory(device, torch.get_num_threads())
    if "gpu" in only:
        print("GPU fast path: PGD-10, ResNet-20, batch 256", flush=True)
        result["gpu"] = bench_gpu(device, args.repeats, args.gpu_batches)
    result["load_average_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prev = json.loads(out.read_text()) if out.exists() else {}
    prev = prev if isinstance(prev, dict) else {}
    # the newest result of each section, with the run facts (command, load) it came from,
    # so the suite can be run in pieces (--only) and still give one combined file
    sections = dict(prev.get("sections", {}))
    meta = {k: v for k, v in result.items() if k not in SECTIONS}
    for k in SECTIONS:
        if k in result:
            sections[k] = {**result[k], "run": meta}
    runs = [*prev.get("runs", []), result][-8:]
    out.write_text(json.dumps({"sections": sections, "latest": result, "runs": runs}, indent=1))
    print(f"wrote {out}")


def _peer_versions() -> dict[str, str | None]:
    vers: dict[str, str | None] = {}
    for mod in ("torchattacks", "foolbox", "art"):
        try:
            vers[mod] = __import__(mod).__version__
        except ImportError:
            vers[mod] = None
    return vers


if __name__ == "__main__":
    main()
