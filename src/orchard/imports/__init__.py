"""Bulk import of members, orders, refunds and behaviour events from CSV (UTF-8 with or without BOM,
GB18030) and XLSX (SPEC M5, issue #3): streamed reading, header mapping with Chinese and English
names, per-row validation with an error report, idempotent writes on the same keys as HTTP ingestion
(a refund that arrives before its order is kept pending and applied when the order is imported)."""
