"""Shadow-model training: splits, cache + resume, loop/vmap equivalence, bad input."""

from __future__ import annotations

import pytest
import torch

from bastion.core import ConfigError, InputError
from bastion.training.shadow import (
    ShadowConfig,
    membership_matrix,
    model_indices,
    pick_method,
    train_shadows,
)

TINY = ShadowConfig(arch="mlp", arch_args={"hidden": [32]}, epochs=2, batch_size=50, method="loop")


@pytest.fixture(scope="module")
def pool(mnist_train):
    return mnist_train.x[:200], mnist_train.y[:200]


def test_pairs_are_complementary_halves():
    m = membership_matrix(101, 6, seed=3)
    assert m.shape == (101, 6)
    assert (m.sum(0) == 50).all()
    assert not (m[:, 0] & m[:, 1]).any()
    assert int(m[:, :2].any(1).sum()) == 100  # odd pool: one example is OUT for the pair
    assert (m.view(101, 3, 2).sum(-1) <= 1).all()
    even = membership_matrix(100, 6, seed=3)
    assert (even.sum(1) == 3).all()  # even pool: IN for exactly half of the models
    assert torch.equal(model_indices(101, 4, 3), torch.nonzero(m[:, 4]).flatten())
    assert not torch.equal(model_indices(101, 0, 3), model_indices(101, 0, 4))


def test_cache_and_resume(pool, tmp_path):
    x, y = pool
    calls: list[int] = []
    first = train_shadows(x, y, 4, TINY, cache_dir=tmp_path, device="cpu", stop_after=2,
                          on_model=lambda i, ls: calls.append(i))
    assert len(first) == 2 and first.trained == 2 and calls == [0, 1]
    assert first.member.shape == (200, 2)
    resumed = train_shadows(x, y, 4, TINY, cache_dir=tmp_path, device="cpu",
                            on_model=lambda i, ls: calls.append(i))
    assert calls == [0, 1, 2, 3]  # models 0 and 1 were loaded, not retrained
    assert resumed.loaded == 2 and resumed.trained == 2 and len(resumed) == 4
    assert torch.equal(resumed.member, membership_matrix(200, 4, TINY.seed))
    for a, b in zip(first.models, resumed.models[:2], strict=True):
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(pa, pb)
    again = train_shadows(x, y, 4, TINY, cache_dir=tmp_path, device="cpu")
    assert again.trained == 0 and again.loaded == 4 and again.method == "cached"
    # the cache refuses a different recipe instead of mixing models
    with pytest.raises(ConfigError, match="another recipe"):
        train_shadows(x, y, 4, ShadowConfig(**{**TINY.__dict__, "epochs": 3}), cache_dir=tmp_path, device="cpu")


def test_vmap_matches_loop(pool):
    x, y = pool
    loop = train_shadows(x, y, 3, TINY, device="cpu")
    vm = train_shadows(x, y, 3, ShadowConfig(**{**TINY.__dict__, "method": "vmap"}), device="cpu")
    assert vm.method == "vmap" and loop.method == "loop"
    for i in range(3):
        for a, b in zip(loop.losses[i], vm.losses[i], strict=True):
            assert a == pytest.approx(b, rel=1e-3, abs=1e-4)
        for pa, pb in zip(loop.models[i].parameters(), vm.models[i].parameters(), strict=True):
            assert torch.allclose(pa, pb, atol=1e-4, rtol=1e-3)
    # different models really differ (different seeds and halves)
    assert not torch.allclose(next(loop.models[0].parameters()), next(loop.models[1].parameters()))


def test_process_path_matches_loop_and_resumes(pool, tmp_path):
    """Worker processes (one thread each) give the loop's models, and write the cache
    model by model so a later run resumes; the process path needs a CPU device."""
    x, y = pool
    loop = train_shadows(x, y, 3, TINY, device="cpu")
    proc_cfg = ShadowConfig(**{**TINY.__dict__, "method": "process", "workers": 2})
    first = train_shadows(x, y, 1, proc_cfg, cache_dir=tmp_path, device="cpu")  # model 0
    seen: list[int] = []
    proc = train_shadows(x, y, 3, proc_cfg, cache_dir=tmp_path, device="cpu",
                         on_model=lambda i, ls: seen.append(i))
    assert first.method == "process" and proc.method == "process"
    assert proc.loaded == 1 and proc.trained == 2 and sorted(seen) == [1, 2]
    assert sorted(p.name for p in tmp_path.glob("model-*.safetensors")) == [
        f"model-{i:05d}.safetensors" for i in range(3)]
    for i in range(3):
        assert proc.losses.get(i, loop.losses[i]) == pytest.approx(loop.losses[i], rel=1e-4)
        for pa, pb in zip(loop.models[i].parameters(), proc.models[i].parameters(), strict=True):
            assert torch.allclose(pa, pb, atol=1e-5)
    if torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CPU"):
            train_shadows(x, y, 2, proc_cfg, device="cuda")


def test_channels_last_training_matches_default_layout(pool):
    """The CPU conv fast path (channels-last + fused optimizer) trains the same model."""
    from bastion.core import InputSpec
    from bastion.training.shadow import _build, _model_seed, _train_one

    x, y = pool
    cfg = ShadowConfig(arch="cnn-small", epochs=1, batch_size=50, method="loop")
    idx = model_indices(200, 0, 0)
    fast = _build(cfg, InputSpec((1, 28, 28)), 10, 0, torch.device("cpu"))
    ref = _build(cfg, InputSpec((1, 28, 28)), 10, 0, torch.device("cpu"))
    _train_one(fast, x, y, idx, 0, cfg)
    assert fast.module.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(ref.parameters(), lr=cfg.lr, foreach=False)
    g = torch.Generator().manual_seed(_model_seed(0, 0, "order"))
    order = torch.randperm(len(idx), generator=g)
    ref.train()
    for s in range(0, len(order), cfg.batch_size):
        b = idx[order[s:s + cfg.batch_size]]
        loss = torch.nn.functional.cross_entropy(ref(x[b]), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for pa, pb in zip(fast.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-5)


def test_auto_picks_a_measured_method(pool):
    from bastion.core import InputSpec
    x, y = pool
    method, times = pick_method(TINY, InputSpec((1, 28, 28)), 10, x, y, 4, torch.device("cpu"), steps=2,
                                num_models=8)
    assert {"loop", "vmap"} <= set(times) <= {"loop", "vmap", "process"}
    assert method in times and times[method] == min(times.values())


def test_bad_inputs(pool):
    x, y = pool
    with pytest.raises(ConfigError):
        train_shadows(x, y, 0, TINY, device="cpu")
    with pytest.raises(ConfigError):
        ShadowConfig(method="magic").validate()
    with pytest.raises(InputError):
        train_shadows(x, y[:10], 2, TINY, device="cpu")
    with pytest.raises(InputError):
        train_shadows(x[:, :, :20], y, 2, ShadowConfig(**{**TINY.__dict__, "arch": "cnn-small", "arch_args": {},
                                                          "spec": __import__("bastion").core.InputSpec((1, 28, 28))}),
                      device="cpu")


def test_auto_is_a_fixed_rule_not_a_timing(pool, monkeypatch):
    """'auto' never times (the recorded method used to change between identical runs)."""
    import bastion.training.shadow as sh
    from bastion.training.shadow import choose_method

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert choose_method(TINY, True, 1, 200, cpu, cores=4) == "loop"
    assert choose_method(TINY, True, 8, 200, gpu, cores=4) == "vmap"
    assert choose_method(TINY, False, 8, 200, gpu, cores=4) == "loop"
    assert choose_method(TINY, True, 8, 200, cpu, cores=1) == "vmap"        # 1 core: no workers
    assert choose_method(TINY, True, 8, 200, cpu, cores=2) == "vmap"        # 8 x 4 steps: too few
    big = ShadowConfig(**{**TINY.__dict__, "epochs": 10, "batch_size": 32})
    assert choose_method(big, True, 64, 2000, cpu, cores=2) == "process"   # 64 x 320 steps
    assert choose_method(big, True, 64, 2000, cpu, cores=8) == "process"
    monkeypatch.setattr(sh, "pick_method", lambda *a, **k: pytest.fail("auto must not time"))
    x, y = pool
    auto = ShadowConfig(**{**TINY.__dict__, "method": "auto"})
    runs = [train_shadows(x, y, 2, auto, device="cpu") for _ in range(2)]
    assert runs[0].method == runs[1].method == choose_method(auto, True, 2, 200, torch.device("cpu"))
    for a, b in zip(runs[0].models, runs[1].models, strict=True):
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(pa, pb)            # same seed, same thread count: bit-identical
    with pytest.raises(ConfigError):
        ShadowConfig(method="fastest").validate()
    ShadowConfig(method="auto-timed").validate()


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_cached_model_is_reported_and_retrained(pool, tmp_path, capsys):
    x, y = pool
    first = train_shadows(x, y, 2, TINY, cache_dir=tmp_path, device="cpu")
    assert not list(tmp_path.glob(".*.tmp"))                 # atomic writes leave no temporaries
    _truncate(tmp_path / "model-00001.safetensors")
    capsys.readouterr()
    again = train_shadows(x, y, 2, TINY, cache_dir=tmp_path, device="cpu")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: cached shadow model")
    assert "model-00001" in err[0] and "retraining" in err[0]
    assert again.loaded == 1 and again.trained == 1
    for a, b in zip(first.models[1].parameters(), again.models[1].parameters(), strict=True):
        assert torch.equal(a, b)
    third = train_shadows(x, y, 2, TINY, cache_dir=tmp_path, device="cpu")   # repaired
    assert third.loaded == 2 and capsys.readouterr().err == ""
    (tmp_path / "model-00000.safetensors").write_bytes(b"")                # empty file
    assert train_shadows(x, y, 2, TINY, cache_dir=tmp_path, device="cpu").trained == 1


def test_truncated_cache_config_is_reported_and_rebuilt(pool, tmp_path, capsys):
    import json

    x, y = pool
    train_shadows(x, y, 2, TINY, cache_dir=tmp_path, device="cpu")
    _truncate(tmp_path / "config.json")
    capsys.readouterr()
    again = train_shadows(x, y, 2, TINY, cache_dir=tmp_path, device="cpu")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: shadow cache file") and "config.json" in err[0]
    assert again.trained == 2 and again.loaded == 0             # nothing vouches for the old models
    assert json.loads((tmp_path / "config.json").read_text())["pool_size"] == 200
    assert train_shadows(x, y, 2, TINY, cache_dir=tmp_path, device="cpu").loaded == 2


SCRIPT = """
import sys
import torch
from bastion.training.shadow import ShadowConfig, train_shadows, unguarded_main_script
cfg = ShadowConfig(arch="mlp", arch_args={"hidden": [8]}, epochs=int(sys.argv[2]),
                   batch_size=int(sys.argv[3]), method=sys.argv[1], workers=2)
x, y = torch.rand(40, 1, 4, 4), torch.arange(40) % 2
"""


@pytest.mark.parametrize("method", ["process", "auto"])
def test_process_training_from_a_script_without_main_guard(tmp_path, method):
    """A script calling shadow training at its top level: 'process' explains the missing
    `if __name__ == "__main__":` guard before starting any worker (it used to report that
    the workers died, out of memory?); 'auto' falls back to an in-process path."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT + "sh = train_shadows(x, y, 4, cfg, device='cpu', progress=False)\n"
                      "print('METHOD', sh.method)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
           "OMP_NUM_THREADS": "1"}
    # 'auto' would pick worker processes here: 4 models x 25 epochs x 20 steps
    args = [method, "1", "50"] if method == "process" else [method, "25", "1"]
    t = os.times()
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          env=env, timeout=300)
    after = os.times()
    # CPU seconds of the child (not wall time, which a busy machine inflates)
    assert (after.children_user + after.children_system) - (t.children_user + t.children_system) < 60
    if method == "process":
        assert done.returncode != 0
        last = done.stderr.strip().splitlines()[-1]
        assert "ConfigError" in last and '__name__ == "__main__"' in last and "user_script.py" in last
        assert "died" not in done.stderr
    else:
        assert done.returncode == 0, done.stderr[-2000:]
        assert "METHOD vmap" in done.stdout


def test_main_guard_detection_accepts_a_guarded_script(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "guarded.py"
    script.write_text(SCRIPT + "def main():\n    print('UNGUARDED', unguarded_main_script())\n"
                      "if __name__ == '__main__':\n    main()\nelse:\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run([sys.executable, str(script), "loop", "1", "50"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0 and "UNGUARDED None" in out.stdout
    bare = tmp_path / "bare.py"
    bare.write_text(SCRIPT + "def main():\n    print('UNGUARDED', unguarded_main_script())\nmain()\n")
    out = subprocess.run([sys.executable, str(bare), "loop", "1", "50"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0 and f"UNGUARDED {bare}" in out.stdout
