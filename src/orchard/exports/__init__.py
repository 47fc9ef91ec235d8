"""Exports (SPEC M5, issue #3 part 2): members, orders and events as CSV (UTF-8 with BOM) or XLSX,
streamed in id-ordered keyset chunks with flat memory, over HTTP (`/api/v1/exports/*`) and the CLI
(`orchard export`). Owns the field catalog (`columns`); scoping and masking come from `members`,
cell rendering and the formula-injection guard from `kit.tabular`. Every export writes an audit row."""
