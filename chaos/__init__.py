"""Fault scenarios and their invariants, runnable by SREs (see the chaos suite issue)."""
