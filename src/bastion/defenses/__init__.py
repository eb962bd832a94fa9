"""Defenses. `bastion.defenses.gradient`: gradient-leakage defenses (noise, pruning,
quantisation, per-example clipping + noise)."""
