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
