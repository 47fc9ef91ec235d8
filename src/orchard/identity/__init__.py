"""Identity keys and resolution (SPEC M2, OneID): normalise each key, find the member it belongs to,
link new keys, create the member when none matches, and record a merge candidate — never guess —
when keys in one call point at two members."""
