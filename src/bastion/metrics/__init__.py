"""Pure metric functions (no I/O): image similarity, evasion, membership, statistics."""
