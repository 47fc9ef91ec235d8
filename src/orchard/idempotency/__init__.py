"""The `Idempotency-Key` header on writes (IETF draft-ietf-httpapi-idempotency-key-header): same key
and same request → the stored response; same key, other request → 422; first request still
running → 409. Keys are scoped per credential owner (staff account or API key)."""
