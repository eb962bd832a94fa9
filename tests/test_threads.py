"""The thread policy: --threads wins, OMP_NUM_THREADS is respected, otherwise the faster
of 1 and all cores is measured once per model shape, without touching the model."""

from __future__ import annotations

import pytest
import torch

from bastion import threads
from bastion.core import ConfigError


@pytest.fixture(autouse=True)
def _restore():
    n = torch.get_num_threads()
    threads._cache.clear()
    yield
    torch.set_num_threads(n)
    threads._cache.clear()


def test_requested_wins_and_is_checked(small_model) -> None:
    c = threads.configure(small_model, None, requested=1)
    assert (c.threads, c.policy) == (1, "requested") and torch.get_num_threads() == 1
    for bad in (0, -1, 10_000):
        with pytest.raises(ConfigError, match="--threads"):
            threads.choose(small_model, None, requested=bad)


def test_omp_env_is_respected(small_model, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.choose(small_model, torch.zeros(4, 1, 28, 28)).policy == "OMP_NUM_THREADS"


def test_measured_choice_is_cached_and_leaves_the_model_alone(small_model, mnist_test, monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    before = {k: v.clone() for k, v in small_model.module.state_dict().items()}
    # the fixture is shared: another test may have left gradients; the timing must not touch them
    grads = [None if p.grad is None else p.grad.clone() for p in small_model.module.parameters()]
    rng = torch.random.get_rng_state()
    c = threads.choose(small_model, mnist_test.x[:64])
    assert c.policy == "measured" and c.threads in (1, 2)
    assert "1 thread" in c.detail and "2 threads" in c.detail and "of 32" in c.detail
    assert all(torch.equal(before[k], v) for k, v in small_model.module.state_dict().items())
    assert all((g is None and p.grad is None) or (g is not None and p.grad is not None and torch.equal(g, p.grad))
               for g, p in zip(grads, small_model.module.parameters(), strict=True))
    assert torch.equal(rng, torch.random.get_rng_state())
    assert threads.choose(small_model, mnist_test.x[:64]) is c        # cached per process
    assert c.to_dict()["threads_policy"] == "measured"


def test_one_core_means_one_thread(small_model, monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 1)
    assert threads.choose(small_model, torch.zeros(2, 1, 28, 28)) == threads.ThreadChoice(1, "one core")


def test_per_worker_and_using(monkeypatch) -> None:
    monkeypatch.setattr(threads, "cores", lambda: 8)
    assert threads.per_worker(3) == 2 and threads.per_worker(16) == 1
    n = torch.get_num_threads()
    with threads.using(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == n


def test_cli_rejects_bad_threads_before_work(small_model, tmp_path, capsys) -> None:
    from bastion.cli.main import run
    from bastion.models import save_classifier

    ckpt = save_classifier(tmp_path / "s.st", small_model, dataset="mnist-5k")
    assert run(["attack", "--model", str(ckpt), "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--threads must be an integer in [1," in err
