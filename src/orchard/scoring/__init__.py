"""Scores computed for every member in set-based passes: lifecycle stage (S2), RFM scores and
classes and value tiers (S3), and the preference tags (S1) — read by segments and journeys."""
