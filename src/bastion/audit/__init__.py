"""Audit: config, sections, resumable runner, results store and HTML report.

`run(model, data, config, out_dir=...)` audits any PyTorch model from Python (an
`nn.Module` with its input spec, a Classifier, or a checkpoint); `run_audit` is the
runner underneath, taking a Classifier, a ModelSource or a checkpoint path.
"""

from bastion.audit.config import AuditConfig, default_config, load_config, parse_config
from bastion.audit.entry import run
from bastion.audit.runner import AuditRun, run_audit

__all__ = ["AuditConfig", "AuditRun", "default_config", "load_config", "parse_config", "run", "run_audit"]
