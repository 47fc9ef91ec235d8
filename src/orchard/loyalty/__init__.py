"""Loyalty: the points ledger (entries, lots, allocations), expiry and its policies (SPEC L1–L4)."""
