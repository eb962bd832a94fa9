"""Shadow-model training and scoring throughput for membership inference (issue 6).

Workload (the issue's): cnn-small (~106k parameters) on 2,500 mnist-5k images (one random
half of the 5,000), 10 epochs, batch 32, Adam 1e-3: 790 optimizer steps per model.

Two parts, each short enough to run under the shared CPU lock:

- `--part micro`: seconds per model-step of
  * a bare PyTorch loop (default NCHW layout, default Adam, all threads): the reference;
  * bastion's one-by-one loop (`method='loop'`; on CPU: channels-last + fused Adam) with all
    threads and with one thread;
  * M models stacked + vmap (M = 8, 32);
  * the 'process' path's rate: one-thread steps, divided by the workers that run at once;
  and the path `method='auto-timed'` picks for 256 models (with its probe figures).
- `--part e2e --models N`: trains N shadow models end to end with `method` (default auto)
  into a resumable cache (`--stop-after K` trains at most K new ones, so 256 models can be
  trained in several locked pieces; the wall times of the pieces add up), then scores
  every model in the cache on all 5,000 images.
- `--part score --models N`: only the scoring, of the first N models already in that cache.

    .venv/bin/python benchmarks/membership.py --part micro
    .venv/bin/python benchmarks/membership.py --part e2e --models 256 --stop-after 128
    .venv/bin/python benchmarks/membership.py --part score --models 128
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bastion.attacks.privacy.membership import compute_signals
from bastion.core import InputSpec, available_cores, resolve_device
from bastion.data import load
from bastion.training.shadow import (
    ShadowConfig,
    _build,
    _num_threads,
    _sync,
    _train_group,
    _train_one,
    model_indices,
    pick_method,
    steps_per_model,
    train_shadows,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "membership.json"
CFG = ShadowConfig(arch="cnn-small", epochs=10, batch_size=32)


def timed(fn, steps: int, dev: torch.device) -> float:
    """Seconds per call-step of fn(steps) after a 3-step warm-up."""
    fn(3)
    _sync(dev)
    t = time.perf_counter()
    fn(steps)
    _sync(dev)
    return (time.perf_counter() - t) / steps


def bare_loop(m0: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor):
    """The textbook training loop: NCHW, torch.optim.Adam defaults, shuffled minibatches."""
    net = copy.deepcopy(m0)
    opt = torch.optim.Adam(net.parameters(), lr=CFG.lr)
    xi, yi = x[idx], y[idx]
    order = torch.randperm(len(idx), generator=torch.Generator().manual_seed(0)).to(x.device)

    def run(k: int) -> None:
        for s in range(k):
            b = order[(s * CFG.batch_size) % (len(order) - CFG.batch_size):][:CFG.batch_size]
            loss = F.cross_entropy(net(xi[b]), yi[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return run


def env(dev: torch.device) -> dict:
    return {"device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cores": available_cores(), "machine": platform.machine(), "load_avg_start": os.getloadavg()}


def micro(dev: torch.device, steps: int, groups: list[int]) -> dict:
    d = load("mnist-5k", "all")
    x, y = d.x.to(dev), d.y.to(dev)
    spec = InputSpec((1, 28, 28))
    idx = model_indices(len(d), 0, CFG.seed).to(dev)
    m0 = _build(CFG, spec, 10, 0, dev)
    spm = steps_per_model(CFG, len(d))
    res = {**env(dev), "params": sum(p.numel() for p in m0.parameters()), "steps_per_model": spm}
    res["bare_loop_s_per_step"] = timed(bare_loop(m0, x, y, idx), steps, dev)
    res["loop_s_per_step"] = timed(lambda k: _train_one(copy.deepcopy(m0), x, y, idx, 0, CFG, max_steps=k),
                                   steps, dev)
    print(f"bare loop {res['bare_loop_s_per_step'] * 1e3:.2f} ms/step, bastion loop "
          f"{res['loop_s_per_step'] * 1e3:.2f} ms/step", flush=True)
    if dev.type == "cpu":
        with _num_threads(1):
            res["loop_1thread_s_per_step"] = timed(
                lambda k: _train_one(copy.deepcopy(m0), x, y, idx, 0, CFG, max_steps=k), steps, dev)
        w = available_cores()
        res["process_workers"] = w
        res["process_s_per_model_step"] = res["loop_1thread_s_per_step"] / w
        print(f"1 thread {res['loop_1thread_s_per_step'] * 1e3:.2f} ms/step -> {w} workers "
              f"{res['process_s_per_model_step'] * 1e3:.2f} ms/model-step", flush=True)
    for g in groups:
        models = [copy.deepcopy(m0) for _ in range(g)]
        t = timed(lambda k, models=models, g=g: _train_group(models, x, y, [idx] * g, list(range(g)), CFG,
                                                               max_steps=k), max(steps // 3, 4), dev)
        res[f"vmap{g}_s_per_model_step"] = t / g
        print(f"vmap M={g}: {t / g * 1e3:.2f} ms/model-step", flush=True)
    base = res["loop_s_per_step"]
    for k in [k for k in res if k.endswith("_s_per_step") or k.endswith("_s_per_model_step")]:
        res[k.replace("_s_per_step", "").replace("_s_per_model_step", "") + "_speedup_vs_bare"] = \
            res["bare_loop_s_per_step"] / res[k]
    res["vmap_speedups_vs_loop"] = {g: base / res[f"vmap{g}_s_per_model_step"] for g in groups}
    res["auto_pick_256"], res["auto_probe_256"] = pick_method(CFG, spec, 10, x, y, 8, dev, num_models=256)
    res["predicted_256_s"] = {k: v * spm * 256 for k, v in res["auto_probe_256"].items()}
    res["load_avg_end"] = os.getloadavg()
    return res


def score(dev: torch.device, models: int, method: str, cache: Path) -> dict:
    d = load("mnist-5k", "all")
    cfg = ShadowConfig(**{**CFG.__dict__, "method": method})
    sh = train_shadows(d.x, d.y, models, cfg, cache_dir=cache, device=dev, stop_after=0)
    res = {**env(dev), "scored_models": len(sh.models), "cache": str(cache)}
    x, y = d.x.to(dev), d.y.to(dev)
    compute_signals(sh.models[:1], x, y)  # warm-up
    t = time.perf_counter()
    compute_signals(sh.models, x, y, sh.member)
    _sync(dev)
    res["score_wall_s"] = time.perf_counter() - t
    res["score_s_per_model_5000"] = res["score_wall_s"] / len(sh.models)
    res["score256_s_extrapolated"] = res["score_s_per_model_5000"] * 256
    print(f"scored {len(sh.models)} models on 5,000 images in {res['score_wall_s']:.1f} s", flush=True)
    res["load_avg_end"] = os.getloadavg()
    return res


def e2e(dev: torch.device, models: int, stop_after: int | None, method: str, cache: Path) -> dict:
    d = load("mnist-5k", "all")
    cfg = ShadowConfig(**{**CFG.__dict__, "method": method})
    res = {**env(dev), "models": models, "method_requested": method, "cache": str(cache)}
    t = time.perf_counter()
    sh = train_shadows(d.x, d.y, models, cfg, cache_dir=cache, device=dev, stop_after=stop_after)
    wall = time.perf_counter() - t
    res.update(trained=sh.trained, loaded=sh.loaded, method=sh.method, train_wall_s=wall,
               train_s_per_model=wall / max(sh.trained, 1))
    print(f"trained {sh.trained} (loaded {sh.loaded}) with {sh.method} in {wall:.1f} s "
          f"({res['train_s_per_model']:.2f} s/model)", flush=True)
    t = time.perf_counter()
    compute_signals(sh.models, d.x.to(dev), d.y.to(dev), sh.member)
    _sync(dev)
    res["scored_models"] = len(sh.models)
    res["score_wall_s"] = time.perf_counter() - t
    res["score_s_per_model_5000"] = res["score_wall_s"] / len(sh.models)
    print(f"scored {len(sh.models)} models on 5,000 images in {res['score_wall_s']:.1f} s", flush=True)
    res["load_avg_end"] = os.getloadavg()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("micro", "e2e", "score"), default="micro")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--groups", default="8,32")
    ap.add_argument("--models", type=int, default=256)
    ap.add_argument("--stop-after", type=int, default=None)
    ap.add_argument("--method", default="auto")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "bench-shadows"))
    ap.add_argument("--tag", default=None, help="key of this run in the results file")
    a = ap.parse_args()
    dev = resolve_device(a.device)
    if a.part == "micro":
        res = micro(dev, a.steps, [int(v) for v in a.groups.split(",")])
    elif a.part == "score":
        res = score(dev, a.models, a.method, Path(a.cache) / f"{dev.type}-{a.method}")
    else:
        res = e2e(dev, a.models, a.stop_after, a.method, Path(a.cache) / f"{dev.type}-{a.method}")
    print(json.dumps(res, indent=2, default=str))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(OUT.read_text()) if OUT.exists() else {}
    runs.pop("cpu", None)  # the old single-entry layout (taken under load; superseded)
    runs[a.tag or f"{dev.type}-{a.part}"] = res
    OUT.write_text(json.dumps(runs, indent=2, default=str))


if __name__ == "__main__":
    main()
