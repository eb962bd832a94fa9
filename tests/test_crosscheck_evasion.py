"""Cross-checks against peer libraries (extra `crosscheck`): same model, data and budgets.

Fixed-budget attacks: our robust accuracy must be within 2 points of the peer's, or lower.
Minimum-norm attacks: our success must be at least the peer's (minus 2 points) and our
mean norm within 10% of the peer's, or smaller. Skipped when the peer is not installed.
"""

from __future__ import annotations

import pytest
import torch

from bastion.attacks import create

pytestmark = pytest.mark.crosscheck

N = 64
TOL_ACC = 0.02
TOL_NORM = 1.10


@pytest.fixture(scope="module")
def data(correct_batch):
    x, y = correct_batch
    return x[:N], y[:N]


def _robust(model, x_adv, y) -> float:
    return float((model.predict(x_adv.detach()).cpu() == y.cpu()).float().mean())


def _success_l2(model, x, x_adv, y) -> tuple[torch.Tensor, torch.Tensor]:
    ok = model.predict(x_adv.detach()).cpu() != y.cpu()
    return ok, (x_adv.detach().cpu().float() - x.cpu()).flatten(1).norm(dim=1)


def _compare_min_norm(name, model, x, y, ours, peer_adv) -> None:
    """Success at least the peer's; mean L2 compared on the examples both attacks broke
    (a mean over different subsets would favour whichever succeeds less often)."""
    ok_p, l2_p = _success_l2(model, x, peer_adv, y)
    ok_o, l2_o = ours.success.cpu(), ours.norms["l2"].cpu()
    both = ok_o & ok_p
    assert bool(both.any()), f"{name}: no example broken by both"
    n_o, n_p = float(l2_o[both].mean()), float(l2_p[both].mean())
    _report(name, success_ours=float(ok_o.float().mean()), success_peer=float(ok_p.float().mean()),
            mean_l2_ours_common=n_o, mean_l2_peer_common=n_p,
            median_l2_ours_common=float(l2_o[both].median()),
            median_l2_peer_common=float(l2_p[both].median()), n_common=float(both.sum()))
    assert float(ok_o.float().mean()) >= float(ok_p.float().mean()) - TOL_ACC
    assert n_o <= TOL_NORM * n_p, (n_o, n_p)


def _report(name: str, **figs: float) -> None:
    print(f"\nCROSSCHECK {name}: " + ", ".join(f"{k}={v:.4f}" for k, v in figs.items()))


def _ta():
    return pytest.importorskip("torchattacks")


def test_fgsm_matches_torchattacks(small_model, data):
    ta = _ta()
    x, y = data
    ours = create("fgsm", eps=0.1)(small_model, x, y)
    peer = ta.FGSM(small_model, eps=0.1)(x, y)
    _report("fgsm eps=0.1", ours=ours.robust_accuracy, peer=_robust(small_model, peer, y))
    assert ours.robust_accuracy <= _robust(small_model, peer, y) + TOL_ACC
    # FGSM is deterministic: the adversarial batches agree up to float noise
    assert float((ours.x_adv.cpu() - peer.cpu()).abs().max()) < 1e-5


def test_pgd_linf_vs_torchattacks(small_model, data):
    ta = _ta()
    x, y = data
    ours = create("pgd", eps=0.1, alpha=0.01, steps=20)(small_model, x, y)
    torch.manual_seed(0)
    peer = ta.PGD(small_model, eps=0.1, alpha=0.01, steps=20, random_start=True)(x, y)
    r_peer = _robust(small_model, peer, y)
    _report("pgd-linf eps=0.1 robust acc", ours=ours.robust_accuracy, peer=r_peer)
    assert ours.robust_accuracy <= r_peer + TOL_ACC, (ours.robust_accuracy, r_peer)


def test_apgd_vs_torchattacks(small_model, data):
    ta = _ta()
    x, y = data
    ours = create("apgd", eps=0.1, steps=20, loss="ce")(small_model, x, y)
    peer = ta.APGD(small_model, norm="Linf", eps=0.1, steps=20, n_restarts=1, loss="ce", seed=0)(x, y)
    r_peer = _robust(small_model, peer, y)
    _report("apgd-ce eps=0.1 robust acc", ours=ours.robust_accuracy, peer=r_peer)
    assert ours.robust_accuracy <= r_peer + TOL_ACC, (ours.robust_accuracy, r_peer)


def test_apgd_dlr_vs_torchattacks(small_model, data):
    ta = _ta()
    x, y = data
    ours = create("apgd", eps=0.1, steps=20, loss="dlr")(small_model, x, y)
    peer = ta.APGD(small_model, norm="Linf", eps=0.1, steps=20, n_restarts=1, loss="dlr", seed=0)(x, y)
    r_peer = _robust(small_model, peer, y)
    _report("apgd-dlr eps=0.1 robust acc", ours=ours.robust_accuracy, peer=r_peer)
    assert ours.robust_accuracy <= r_peer + TOL_ACC, (ours.robust_accuracy, r_peer)


def test_square_vs_torchattacks(small_model, data):
    ta = _ta()
    x, y = data
    ours = create("square", eps=0.1, max_queries=300)(small_model, x, y)
    peer = ta.Square(small_model, norm="Linf", eps=0.1, n_queries=300, seed=0)(x, y)
    r_peer = _robust(small_model, peer, y)
    _report("square eps=0.1 robust acc", ours=ours.robust_accuracy, peer=r_peer)
    assert ours.robust_accuracy <= r_peer + TOL_ACC, (ours.robust_accuracy, r_peer)


def test_cw_l2_vs_torchattacks(small_model, data):
    ta = _ta()
    x, y = data
    x, y = x[:32], y[:32]
    ours = create("cw-l2", binary_search_steps=5, max_iter=100, initial_const=1.0)(small_model, x, y)
    peer = ta.CW(small_model, c=1.0, kappa=0, steps=100, lr=0.01)(x, y)
    _compare_min_norm("cw-l2", small_model, x, y, ours, peer)


def test_deepfool_vs_torchattacks(small_model, data):
    ta = _ta()
    x, y = data
    x, y = x[:16], y[:16]
    ours = create("deepfool", overshoot=0.02, max_iter=50)(small_model, x, y)
    peer = ta.DeepFool(small_model, steps=50, overshoot=0.02)(x, y)
    _compare_min_norm("deepfool", small_model, x, y, ours, peer)


class _Float32(torch.nn.Module):
    """ART's HopSkipJump feeds float64 arrays; cast them for the float32 network."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.float())


def test_hopskipjump_vs_art(small_model, data):
    pytest.importorskip("art")
    from art.attacks.evasion import HopSkipJump as ArtHSJ
    from art.estimators.classification import PyTorchClassifier

    x, y = data
    x, y = x[:8], y[:8]
    clf = PyTorchClassifier(model=_Float32(small_model), loss=torch.nn.CrossEntropyLoss(),
                            input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0),
                            device_type="cpu")
    np_x = x.numpy()
    peer = ArtHSJ(clf, norm=2, max_iter=10, max_eval=1000, init_eval=100, init_size=100,
                  verbose=False).generate(np_x)
    ours = create("hopskipjump", norm="l2", max_iter=10, max_evals=1000, init_evals=100)(small_model, x, y)
    _compare_min_norm("hopskipjump", small_model, x, y, ours, torch.from_numpy(peer).float())
