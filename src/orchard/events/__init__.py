"""Events (SPEC E1–E4): orders with lines, refunds, behaviour events; idempotent ingestion on
(source, external_id), out-of-order refunds, and the member aggregates kept with every event."""
