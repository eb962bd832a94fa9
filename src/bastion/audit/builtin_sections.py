"""Imports the modules that register audit section kinds."""

import bastion.audit.backdoor_section
import bastion.audit.certify_section
import bastion.audit.defense_section
import bastion.audit.dp_section
import bastion.audit.evasion_section
import bastion.audit.fl_poisoning_section
import bastion.audit.fl_privacy_section
import bastion.audit.leakage_section
import bastion.audit.membership_section
import bastion.audit.poisoning_section  # noqa: F401
