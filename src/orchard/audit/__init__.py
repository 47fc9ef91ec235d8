"""Audit log (SPEC O5): an append-only record of changes to consent, permissions, merges, and later
points, coupons and tiers. Services call `audit.service.record` inside their own transaction."""
