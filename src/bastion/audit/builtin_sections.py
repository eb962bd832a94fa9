"""Imports the modules that register audit section kinds."""

import bastion.audit.evasion_section  # noqa: F401
