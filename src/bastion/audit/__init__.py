"""Audit: config, sections, resumable runner, results store and HTML report."""

from bastion.audit.config import AuditConfig, default_config, load_config, parse_config
from bastion.audit.runner import AuditRun, run_audit

__all__ = ["AuditConfig", "AuditRun", "default_config", "load_config", "parse_config", "run_audit"]
