"""Organisation: HQ → regions → stores (SPEC O1). Owns `org_units` and the store sets that scope
what store-level staff may read."""
