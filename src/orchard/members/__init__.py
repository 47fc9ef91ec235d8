"""Members (SPEC M1, M3, M4, M6): profiles, aggregates, consent, notes, manual tags, duplicate
candidates and merges. Identity keys live in `orchard.identity`; store scoping in `members.scope`."""
