"""Scale Bastion's workloads out on Ray (the optional `bastion[scale]` extra).

- `bastion.scale.engine`: connect to a local or remote Ray cluster (`connect`), with
  one-line errors for a missing extra or an unreachable address.
- `bastion.scale.shadows`: membership-inference shadow training and scoring as Ray tasks
  (the 'ray' method of `bastion.training.shadow.train_shadows`; same on-disk cache).
- `bastion.scale.audit`: audit steps (section, attack, budget) as Ray tasks
  (`run_audit(..., engine='ray')`).

Ray itself is imported only when one of these is used.
"""

from bastion.scale.engine import ENGINES, INSTALL_HINT, RAY_REQUIRED, Cluster, connect, shutdown

__all__ = ["ENGINES", "INSTALL_HINT", "RAY_REQUIRED", "Cluster", "connect", "shutdown"]
