"""Segment / RudderStack tracking-spec compatibility (SPEC E3).

Owns the `/v1/identify`, `/v1/track`, `/v1/page`, `/v1/screen`, `/v1/alias`, `/v1/group` and
`/v1/batch` routes, so the published Segment and RudderStack SDKs (write key = an Orchard API key)
send to Orchard unchanged: `mapping` turns one tracking-spec message into an Orchard ingestion item
(pure, no database), `service` applies it (orders, refunds and events through
`orchard.events.ingest`; identify and alias through identity resolution) one savepoint per message,
and `endpoints` handles auth, gzip, size limits and the Segment-style responses. The mapping rules
are in `mapping`'s docstring.
"""
