"""Bulk import of members and orders from CSV (UTF-8 with or without BOM, GB18030) and XLSX
(SPEC M5, issue #3): streamed reading, header mapping with Chinese and English names, per-row
validation with an error report, idempotent writes on the same keys as HTTP ingestion."""
