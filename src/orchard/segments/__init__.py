"""Segments (人群包, SPEC S4): a JSON definition language compiled to one SQL statement, live counts
and previews, saved segments with membership spells (entered_at / exited_at), size history, and
re-evaluation of single members on events and at their computed flip times."""
