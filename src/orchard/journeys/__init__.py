"""Journeys (SPEC J1–J5): versioned graphs of steps that members run through, one row per member's run
with its current step and next wake-up, advanced by set-based sweeps and a step engine."""
