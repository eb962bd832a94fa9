# Ray scale-out benchmark for shadow-model training (see the docstring).
"""Wall time of training 64 membership-inference shadow models on this machine's cores:
Bastion's local path against the Ray engine, plus a simulated multi-node cluster.

    python benchmarks/scale_ray.py [--shadows 64] [--pool 600] [--epochs 1] [--arch cnn-small]
                                   [--cpus 2] [--nodes 2] [--node-shadows 64] [--repeats 2]
    python benchmarks/scale_ray.py --part audit [--cpus 2] [--audit-n 64] [--pgd-steps 10]

1. local: `train_shadows(method='auto')` (the fixed rule picks vmap or worker processes),
   and each local path ('vmap': all models stacked in this process; 'process': one
   worker process per core), so Ray is also compared with the fastest local path.
2. ray: `train_shadows(method='ray')` on a local Ray cluster of `--cpus` CPUs started
   before the clock starts (a user with a cluster pays its start-up once); Ray's own
   start-up is reported separately. On one machine Ray can only add overhead (task
   scheduling, object transfer); the figure of merit is the ratio ray / local.
3. multi-node: a Ray head with no CPUs and `--nodes` worker nodes with one CPU each are
   started on this machine with `ray start --block` (each its own raylet with its own
   resource limit, as on separate machines), the driver connects with
   `address=127.0.0.1:PORT`, trains `--node-shadows` models and records how many tasks
   ran on each node. Only the processes this script started are stopped.

`--part audit` instead times a 6-step evasion audit (FGSM and 10-step PGD at three
budgets) locally and with `engine='ray'` and checks the robust accuracies agree
(benchmarks/results/scale_ray_audit.json).

All three caches must agree: the script checks that the Ray-trained weights equal the
local ones within float tolerance. Writes benchmarks/results/scale_ray.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from bastion.data import load
from bastion.training.shadow import ShadowConfig, train_shadows

OUT = Path(__file__).resolve().parent / "results" / "scale_ray.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _max_diff(a: list, b: list) -> float:
    worst = 0.0
    for ma, mb in zip(a, b, strict=True):
        sa, sb = ma.module.state_dict(), mb.module.state_dict()
        worst = max(worst, max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa))
    return worst


def _ray_bin() -> str:
    cand = Path(sys.executable).with_name("ray")
    return str(cand) if cand.exists() else "ray"


def multi_node(x: torch.Tensor, y: torch.Tensor, n: int, cfg: ShadowConfig, nodes: int, tmp: Path) -> dict:
    """Head (0 CPUs) + `nodes` one-CPU worker nodes started with `ray start`; returns timings
    and the per-node task counts."""
    from bastion.scale import engine
    from bastion.scale.shadows import last_placement, last_task_seconds, wait_for_nodes

    port = _free_port()
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    common = ["--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    procs = [subprocess.Popen([_ray_bin(), "start", "--head", f"--port={port}", "--num-cpus=0",
                               "--include-dashboard=false", f"--temp-dir={tmp / 'ray'}",
                               "--object-store-memory=200000000", *common],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    address = f"127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        for _ in range(120):  # the head's GCS port opens
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        engine.shutdown()
        engine.connect(address)
        alive = wait_for_nodes(1, timeout=60)
        for k in range(nodes):  # one at a time: raylets starting together can collide on ports
            for _attempt in range(3):
                p = subprocess.Popen([_ray_bin(), "start", f"--address={address}", "--num-cpus=1",
                                      "--object-store-memory=200000000", *common],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
                procs.append(p)
                alive = wait_for_nodes(k + 2, timeout=60)
                if alive >= k + 2:
                    break
        cluster = engine.connect(address)  # already connected: the cluster as it stands now
        startup = time.perf_counter() - t0
        cache = tmp / "multi"
        t0 = time.perf_counter()
        sh = train_shadows(x, y, n, replace(cfg, method="ray"), cache_dir=cache, device="cpu", progress=False)
        wall = time.perf_counter() - t0
        import ray

        alive_nodes = [nd for nd in ray.nodes() if nd.get("Alive")]
        workers = sorted(nd["NodeID"] for nd in alive_nodes if nd["Resources"].get("CPU", 0) > 0)
        names = {nid: f"worker-{i + 1}" for i, nid in enumerate(workers)}
        names.update({nd["NodeID"]: "head" for nd in alive_nodes if nd["Resources"].get("CPU", 0) == 0})
        placement = {names.get(k, k[:8]): v for k, v in last_placement().items()}
        task_s = last_task_seconds()
        return {"address": address, "nodes_alive": alive, "cluster": cluster.to_dict(),
                "startup_s": startup, "wall_s": wall, "trained": sh.trained,
                "tasks_per_node": placement, "task_seconds": task_s,
                "ray_overhead": wall / (sum(task_s) / nodes), "models": sh.models}
    finally:
        engine.shutdown()
        for p in reversed(procs):  # only the processes started here, by process group
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


AUDIT_SWEEP = {"data": {"n": 64}, "sections": [
    {"kind": "evasion", "attacks": [{"attack": "fgsm", "eps": [0.05, 0.1, 0.2]},
                                    {"attack": "pgd", "eps": [0.05, 0.1, 0.2], "params": {"steps": 10}}]}]}


def audit_sweep(cpus: int, out: Path, n: int = 64, pgd_steps: int = 10) -> None:
    """`--part audit`: a 6-step evasion audit (cnn-small trained 1 epoch, 64 test images),
    locally and with engine='ray'; checks the results agree and writes `out`."""
    from bastion.audit import parse_config, run_audit
    from bastion.models import build_classifier
    from bastion.scale import engine
    from bastion.training import TrainConfig, fit

    train, test = load("mnist-5k", "train"), load("mnist-5k", "test")
    torch.manual_seed(0)
    model = build_classifier("cnn-small", train.input_spec(), train.num_classes, {}, device="cpu")
    fit(model, train, test, TrainConfig(epochs=1, seed=0, progress=False))
    tmp = Path(tempfile.mkdtemp(prefix="bastion-scale-audit-"))
    sweep = json.loads(json.dumps(AUDIT_SWEEP))
    sweep["data"]["n"] = n
    sweep["sections"][0]["attacks"][1]["params"]["steps"] = pgd_steps
    res: dict = {"config": sweep, "cpus": cpus}
    try:
        t0 = time.perf_counter()
        local = run_audit(model, parse_config(json.loads(json.dumps(sweep))), tmp / "local", data="mnist-5k")
        res["local_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        engine.connect(num_cpus=cpus)
        res["ray_startup_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ray_run = run_audit(model, parse_config(json.loads(json.dumps(sweep))), tmp / "ray", data="mnist-5k",
                            engine="ray")
        res["ray_s"] = time.perf_counter() - t0
        res["ray_over_local"] = res["ray_s"] / res["local_s"]
        res["engine"] = ray_run.results["engine"]
        rows = [[r["attack"], r["eps"], r["robust_accuracy"]] for r in local.results["sections"]["evasion"]["summary"]["runs"]]
        rows_ray = [[r["attack"], r["eps"], r["robust_accuracy"]]
                    for r in ray_run.results["sections"]["evasion"]["summary"]["runs"]]
        res["robust_accuracy_equal"] = rows == rows_ray
        res["runs"] = rows
        print(f"audit: local {res['local_s']:.1f} s, ray {res['ray_s']:.1f} s (start-up {res['ray_startup_s']:.1f} s), "
              f"ratio {res['ray_over_local']:.2f}, equal {res['robust_accuracy_equal']}", flush=True)
    finally:
        engine.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shadows", type=int, default=64)
    ap.add_argument("--pool", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--arch", default="cnn-small")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--node-shadows", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2,
                    help="alternate the local 'process' path and Ray this many times (minimum kept)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--part", choices=("shadows", "audit"), default="shadows",
                    help="audit: time a 6-step evasion audit locally and on Ray instead")
    ap.add_argument("--audit-n", type=int, default=64, help="--part audit: test images attacked")
    ap.add_argument("--pgd-steps", type=int, default=10, help="--part audit: PGD iterations")
    args = ap.parse_args()
    if args.part == "audit":
        audit_sweep(args.cpus, args.out if args.out != OUT else OUT.with_name("scale_ray_audit.json"),
                    args.audit_n, args.pgd_steps)
        return

    from bastion.scale import engine
    from bastion.scale.shadows import last_placement, last_task_seconds

    d = load("mnist-5k", "train")
    x, y = d.x[:args.pool], d.y[:args.pool]
    cfg = ShadowConfig(arch=args.arch, epochs=args.epochs, batch_size=args.batch, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix="bastion-scale-"))
    res: dict = {"config": {**vars(args), "out": str(args.out)}, "threads": torch.get_num_threads(),
                 "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "torch": torch.__version__}}
    try:
        t0 = time.perf_counter()
        local = train_shadows(x, y, args.shadows, cfg, cache_dir=tmp / "local", device="cpu", progress=False)
        res["local"] = {"wall_s": time.perf_counter() - t0, "method": local.method}
        print(f"local: {res['local']['wall_s']:.1f} s ({local.method})", flush=True)
        for method in ("vmap", "process"):  # every local path, so the ratio is against the best
            if method == local.method:
                res[f"local_{method}"] = dict(res["local"])
                continue
            t0 = time.perf_counter()
            train_shadows(x, y, args.shadows, replace(cfg, method=method), cache_dir=tmp / method, device="cpu",
                          progress=False)
            res[f"local_{method}"] = {"wall_s": time.perf_counter() - t0, "method": method}
            print(f"local {method}: {res[f'local_{method}']['wall_s']:.1f} s", flush=True)
        best = min(("local", "local_vmap", "local_process"), key=lambda k: res[k]["wall_s"])
        res["local_best"] = {"method": res[best]["method"], "wall_s": res[best]["wall_s"]}

        t0 = time.perf_counter()
        cluster = engine.connect(num_cpus=args.cpus)
        res["ray_startup_s"] = time.perf_counter() - t0
        import ray
        res["ray_version"] = ray.__version__
        t0 = time.perf_counter()
        rs = train_shadows(x, y, args.shadows, replace(cfg, method="ray"), cache_dir=tmp / "ray", device="cpu",
                           progress=False)
        wall = time.perf_counter() - t0
        task_s = last_task_seconds()
        # wall time over the ideal of the tasks' own work spread evenly over the CPUs
        res["ray"] = {"wall_s": wall, "cluster": cluster.to_dict(), "tasks_per_node": last_placement(),
                      "task_seconds": task_s, "ray_overhead": wall / (sum(task_s) / args.cpus)}
        res["ray_over_local"] = res["ray"]["wall_s"] / res["local"]["wall_s"]
        res["ray_over_local_best"] = res["ray"]["wall_s"] / res["local_best"]["wall_s"]
        res["max_weight_diff_ray_vs_local"] = _max_diff(local.models, rs.models)
        engine.shutdown()
        proc_s, ray_s = [res["local_process"]["wall_s"]], [wall]
        for r in range(1, args.repeats):  # alternate, so a change in the machine's load hits both
            t0 = time.perf_counter()
            train_shadows(x, y, args.shadows, replace(cfg, method="process"), cache_dir=tmp / f"process{r}",
                          device="cpu", progress=False)
            proc_s.append(time.perf_counter() - t0)
            engine.connect(num_cpus=args.cpus)
            t0 = time.perf_counter()
            train_shadows(x, y, args.shadows, replace(cfg, method="ray"), cache_dir=tmp / f"ray{r}", device="cpu",
                          progress=False)
            ray_s.append(time.perf_counter() - t0)
            engine.shutdown()
            print(f"repeat {r}: process {proc_s[-1]:.1f} s, ray {ray_s[-1]:.1f} s", flush=True)
        res["local_process"]["samples_s"], res["ray"]["samples_s"] = proc_s, ray_s
        res["local_process"]["wall_s"], res["ray"]["wall_s"] = min(proc_s), min(ray_s)
        best = min(("local", "local_vmap", "local_process"), key=lambda k: res[k]["wall_s"])
        res["local_best"] = {"method": res[best]["method"], "wall_s": res[best]["wall_s"]}
        res["ray_over_local"] = res["ray"]["wall_s"] / res["local"]["wall_s"]
        res["ray_over_local_best"] = res["ray"]["wall_s"] / res["local_best"]["wall_s"]
        print(f"ray: {res['ray']['wall_s']:.1f} s (start-up {res['ray_startup_s']:.1f} s), "
              f"ratio {res['ray_over_local']:.2f} (vs best local {res['ray_over_local_best']:.2f}), "
              f"overhead {res['ray']['ray_overhead']:.2f}x the tasks' own work, "
              f"max weight diff {res['max_weight_diff_ray_vs_local']:.2e}", flush=True)

        if args.nodes:
            mn = multi_node(x, y, args.node_shadows, cfg, args.nodes, tmp)
            k = min(args.node_shadows, args.shadows)
            mn["max_weight_diff_vs_local"] = _max_diff(local.models[:k], mn.pop("models")[:k])
            res["multi_node"] = mn
            print(f"multi-node: {mn['wall_s']:.1f} s, tasks per node {mn['tasks_per_node']}", flush=True)
    finally:
        engine.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
