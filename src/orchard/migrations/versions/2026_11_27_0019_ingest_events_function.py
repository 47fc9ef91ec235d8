"""orchard_ingest_events(): behaviour events in one round trip on PostgreSQL (events.ingest_pg)

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-27 10:00:00

The thin HTTP path of `POST /api/v1/events` (one item) and `POST /api/v1/ingest` (a batch of events)
calls this function once per request: credential, permission and scope (checked here on every call,
never cached, so a revoked key is refused on its next request in every worker), then for every item
the replay check on (source, external_id), the store code, the member (a member id followed one merge
hop and checked against the caller's stores, or identity keys that all belong to one member, or an
anonymous id nobody has), the insert, the member aggregates (locked in member-id order) and the
segments' dirty mark: what `events.ingest.ingest` writes for such an item.

It decides only what needs no write besides the event's own: an item that would create a member, link
an identity key, record a merge candidate, earn points (an active event rule or event task names it),
release pending points (`p_busy_name`), or whose key-resolved member is outside the caller's stores is
`undecided`. With `p_all_or_nothing` (the thin path) one undecided item makes the call write nothing
and answer a single `fallback` row: the FastAPI route then takes the whole request and answers exactly
as it always has. The caller guarantees that (source, external_id) is unique among `p_items` and sends
identity keys already normalised (identity.normalize runs in Python).

PL/pgSQL, several statements: the replay check reads before the insert, and an item whose insert met a
concurrent writer's row (ON CONFLICT DO NOTHING) is read again in a later statement, whose snapshot sees
that writer's commit — a replay or an id reuse like any other. Aggregate rows are locked in member-id
order before they are updated, the order every batch writer uses, so concurrent batches sharing members
do not deadlock. Inserts go in (source, external_id) order for the same reason.

PostgreSQL only (SQLite keeps the service path). Any change to what an event item writes needs a new
revision with CREATE OR REPLACE, or tests/events/test_ingest_pg.py fails.
"""
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None

FUNCTION = r"""
CREATE OR REPLACE FUNCTION orchard_ingest_events(
    p_credential_kind text,      -- 'apikey' | 'token' (auth.secrets prefixes)
    p_credential_hash text,      -- secret_hash(credential)
    p_ingest_roles text[],       -- the roles holding events:ingest (auth.roles.ROLE_PERMS)
    p_scoped_roles text[],       -- auth.roles.STORE_SCOPED
    p_busy_name text,            -- the event pending points wait for (settings), or NULL
    p_all_or_nothing boolean,    -- one undecided item: write nothing, answer one 'fallback' row
    p_items jsonb)               -- [{i, s, e, h, n, t, c, m, k: [[kind, value], …], a, p}, …]
RETURNS TABLE (i integer,        -- the item's index; -1 for a row about the whole call
               status text,      -- created | duplicate | id_reused | store_unknown | store_not_store |
                                 -- member_not_found | undecided; for -1: bad_api_key | bad_token |
                                 -- forbidden | fallback
               id bigint,        -- the event (created, duplicate)
               member_id bigint, -- its member (created, duplicate), NULL for an anonymous event
               detail text)      -- store_not_store: the unit's kind; forbidden: the caller's role
LANGUAGE plpgsql VOLATILE
AS $fn$
#variable_conflict use_column
DECLARE
    v_now timestamptz := now();
    v_role text;
    v_scoped boolean;
    v_stores bigint[] := '{}';
    v_key record;
    v_staff record;
    v_busy text[];
    d_i integer[];
    d_status text[];
    d_id bigint[];
    d_member bigint[];
    d_store bigint[];
    d_detail text[];
    w_i integer[];
    w_id bigint[];
    l_i integer[];
    l_status text[];
    l_id bigint[];
    l_member bigint[];
    v_members bigint[];
BEGIN
    -- Who is calling (auth.service.principal_for), in the same call as the writes.
    IF p_credential_kind = 'apikey' THEN
        SELECT k.id, k.role, k.store_id, k.revoked_at INTO v_key FROM api_keys k WHERE k.key_hash = p_credential_hash;
        IF NOT FOUND OR v_key.revoked_at IS NOT NULL THEN
            RETURN QUERY SELECT -1, 'bad_api_key'::text, NULL::bigint, NULL::bigint, NULL::text;
            RETURN;
        END IF;
        v_role := v_key.role;
        v_scoped := v_key.store_id IS NOT NULL OR v_key.role = ANY(p_scoped_roles);
        IF v_key.store_id IS NOT NULL THEN
            v_stores := ARRAY[v_key.store_id];
        END IF;
    ELSE
        SELECT s.id, s.role, s.is_active, t.expires_at INTO v_staff
          FROM access_tokens t JOIN staff s ON s.id = t.staff_id WHERE t.token_hash = p_credential_hash;
        IF NOT FOUND OR v_staff.expires_at < v_now OR NOT v_staff.is_active THEN
            RETURN QUERY SELECT -1, 'bad_token'::text, NULL::bigint, NULL::bigint, NULL::text;
            RETURN;
        END IF;
        v_role := v_staff.role;
        v_scoped := v_staff.role = ANY(p_scoped_roles);
        IF v_scoped THEN  -- org.service.stores_under
            WITH RECURSIVE under(id) AS (
                SELECT sc.org_unit_id FROM staff_scopes sc WHERE sc.staff_id = v_staff.id
                UNION SELECT o.id FROM org_units o JOIN under u ON o.parent_id = u.id)
            SELECT coalesce(array_agg(o.id), '{}') INTO v_stores FROM under u JOIN org_units o ON o.id = u.id
             WHERE o.kind = 'store';
        END IF;
    END IF;
    IF NOT (v_role = ANY(p_ingest_roles)) THEN
        RETURN QUERY SELECT -1, 'forbidden'::text, NULL::bigint, NULL::bigint, v_role;
        RETURN;
    END IF;

    -- Names whose items need the earning hooks (loyalty.earning.event_names, plus the pending event).
    SELECT coalesce(array_agg(x.name), '{}') INTO v_busy FROM (
        SELECT r.config ->> 'event' AS name FROM earning_rules r WHERE r.status = 'active' AND r.kind = 'event'
        UNION SELECT t.event FROM loyalty_tasks t WHERE t.active AND t.kind = 'event') x
     WHERE x.name IS NOT NULL;
    IF p_busy_name IS NOT NULL THEN
        v_busy := v_busy || p_busy_name;
    END IF;

    -- Every item's outcome, in events.ingest's order of checks: replay, store code, member id (scope),
    -- earning work, then the member of the identity keys.
    WITH it AS (
        SELECT * FROM jsonb_to_recordset(p_items) AS x(i integer, s text, e text, h text, n text, c text, m bigint,
                                                        k jsonb)
    ), keyed AS (
        SELECT it.i, count(*) AS nkeys, count(idn.member_id) AS nknown, min(idn.member_id) AS lo,
               max(idn.member_id) AS hi, bool_and(kv.value ->> 0 = 'anonymous_id') AS all_anon
          FROM it CROSS JOIN LATERAL jsonb_array_elements(it.k) AS kv(value)
          LEFT JOIN LATERAL (SELECT x.member_id FROM identities x
                              WHERE x.kind = kv.value ->> 0 AND x.value = kv.value ->> 1 LIMIT 1) idn ON true
         GROUP BY it.i
    ), judged AS (
        SELECT it.i, ev.id AS prior_id, ev.member_id AS prior_member, o.id AS store_id, o.kind AS unit_kind,
               CASE WHEN ev.id IS NOT NULL THEN
                        CASE WHEN ev.body_hash = it.h THEN 'duplicate' ELSE 'id_reused' END
                    WHEN it.c IS NOT NULL AND o.id IS NULL THEN 'store_unknown'
                    WHEN it.c IS NOT NULL AND o.kind <> 'store' THEN 'store_not_store'
                    WHEN it.m IS NOT NULL AND (g.id IS NULL OR (v_scoped AND NOT coalesce(g.home_store_id = ANY(v_stores),
                                                                                            false)))
                        THEN 'member_not_found'
                    WHEN it.n = ANY(v_busy) THEN 'undecided'
                    WHEN it.m IS NOT NULL THEN
                        CASE WHEN kd.i IS NULL OR (kd.nknown = kd.nkeys AND kd.lo = g.id AND kd.hi = g.id)
                             THEN 'created' ELSE 'undecided' END
                    WHEN kd.nknown = kd.nkeys AND kd.lo = kd.hi THEN
                        CASE WHEN v_scoped AND NOT coalesce(om.home_store_id = ANY(v_stores), false)
                             THEN 'undecided' ELSE 'created' END
                    WHEN kd.nknown = 0 AND kd.all_anon THEN 'created'
                    ELSE 'undecided' END AS status,
               CASE WHEN it.m IS NOT NULL THEN g.id ELSE kd.lo END AS member_id
          FROM it
          -- LATERAL … LIMIT 1 (every look-up is by a unique key): the subqueries are not flattened into joins, so
          -- each item probes the indexes; as joins, the planner's guess of 100 items (jsonb_to_recordset) and
          -- young statistics chose hash joins over sequential scans of events and members (ms per call).
          LEFT JOIN LATERAL (SELECT x.id, x.member_id, x.body_hash FROM events x
                              WHERE x.source = it.s AND x.external_id = it.e LIMIT 1) ev ON true
          LEFT JOIN LATERAL (SELECT x.id, x.kind FROM org_units x WHERE x.code = it.c LIMIT 1) o ON true
          LEFT JOIN LATERAL (SELECT x.id, x.merged_into_id, x.home_store_id FROM members x WHERE x.id = it.m LIMIT 1)
                    m0 ON true
          LEFT JOIN LATERAL (SELECT x.id, x.home_store_id FROM members x WHERE x.id = m0.merged_into_id LIMIT 1)
                    m1 ON true
          LEFT JOIN LATERAL (SELECT CASE WHEN m0.merged_into_id IS NULL THEN m0.id ELSE m1.id END AS id,
                                    CASE WHEN m0.merged_into_id IS NULL THEN m0.home_store_id
                                         ELSE m1.home_store_id END AS home_store_id) g ON true
          LEFT JOIN keyed kd ON kd.i = it.i
          LEFT JOIN LATERAL (SELECT x.home_store_id FROM members x WHERE x.id = kd.lo AND it.m IS NULL
                            LIMIT 1) om ON true
    )
    SELECT array_agg(j.i ORDER BY j.i), array_agg(j.status ORDER BY j.i),
           array_agg(j.prior_id ORDER BY j.i),
           array_agg(CASE WHEN j.prior_id IS NOT NULL THEN j.prior_member ELSE j.member_id END ORDER BY j.i),
           array_agg(j.store_id ORDER BY j.i), array_agg(j.unit_kind ORDER BY j.i)
      INTO d_i, d_status, d_id, d_member, d_store, d_detail
      FROM judged j;

    IF p_all_or_nothing AND 'undecided' = ANY(d_status) THEN
        RETURN QUERY SELECT -1, 'fallback'::text, NULL::bigint, NULL::bigint, NULL::text;
        RETURN;
    END IF;

    -- The events, in (source, external_id) order; a row a concurrent writer committed first is skipped.
    WITH ins AS (
        INSERT INTO events (source, external_id, body_hash, member_id, anonymous_id, name, store_id, occurred_at,
                            received_at, properties)
        SELECT it.s, it.e, it.h, d.member_id, it.a, it.n, d.store_id, it.t, v_now, coalesce(it.p, '{}'::jsonb)
          FROM unnest(d_i, d_status, d_member, d_store) AS d(i, status, member_id, store_id)
          JOIN jsonb_to_recordset(p_items) AS it(i integer, s text, e text, h text, n text, t timestamptz, a text,
                                                 p jsonb) ON it.i = d.i
         WHERE d.status = 'created'
         ORDER BY it.s, it.e
        ON CONFLICT (source, external_id) DO NOTHING
        RETURNING events.id, events.source, events.external_id
    )
    SELECT coalesce(array_agg(it.i), '{}'), coalesce(array_agg(ins.id), '{}') INTO w_i, w_id
      FROM ins JOIN jsonb_to_recordset(p_items) AS it(i integer, s text, e text)
        ON it.s = ins.source AND it.e = ins.external_id;

    -- Items another writer stored first (a new snapshot: its row is visible now): replays or id reuses.
    IF cardinality(w_i) < (SELECT count(*) FROM unnest(d_status) s WHERE s = 'created') THEN
        SELECT array_agg(d.i), array_agg(CASE WHEN ev.id IS NULL THEN 'retry'
                                              WHEN ev.body_hash = it.h THEN 'duplicate' ELSE 'id_reused' END),
               array_agg(ev.id), array_agg(ev.member_id)
          INTO l_i, l_status, l_id, l_member
          FROM unnest(d_i, d_status) AS d(i, status)
          JOIN jsonb_to_recordset(p_items) AS it(i integer, s text, e text, h text) ON it.i = d.i
          LEFT JOIN LATERAL (SELECT x.id, x.member_id, x.body_hash FROM events x
                              WHERE x.source = it.s AND x.external_id = it.e LIMIT 1) ev ON true
         WHERE d.status = 'created' AND NOT (d.i = ANY(w_i));
        IF 'retry' = ANY(l_status) THEN
            RAISE EXCEPTION 'ingest.retry' USING DETAIL = 'a concurrent write of the same event rolled back';
        END IF;
    END IF;

    -- events.aggregates.on_event, once per member: rows locked in member-id order (one member: the UPDATE's
    -- own lock), then one relative UPDATE.
    SELECT coalesce(array_agg(DISTINCT d.member_id ORDER BY d.member_id), '{}') INTO v_members
      FROM unnest(d_i, d_member) AS d(i, member_id) WHERE d.i = ANY(w_i) AND d.member_id IS NOT NULL;
    IF cardinality(v_members) > 1 THEN
        PERFORM 1 FROM member_aggregates a WHERE a.member_id = ANY(v_members) ORDER BY a.member_id FOR UPDATE;
    END IF;
    UPDATE member_aggregates a
       SET last_event_at = greatest(a.last_event_at, x.last_event_at),
           last_visit_at = greatest(a.last_visit_at, x.last_visit_at),
           last_login_at = greatest(a.last_login_at, x.last_login_at)
      FROM (SELECT d.member_id, max(it.t) AS last_event_at,
                   max(it.t) FILTER (WHERE it.n = 'store_visit') AS last_visit_at,
                   max(it.t) FILTER (WHERE it.n = 'login') AS last_login_at
              FROM unnest(d_i, d_member) AS d(i, member_id)
              JOIN jsonb_to_recordset(p_items) AS it(i integer, n text, t timestamptz) ON it.i = d.i
             WHERE d.i = ANY(w_i) AND d.member_id IS NOT NULL
             GROUP BY d.member_id) x
     WHERE a.member_id = x.member_id AND a.member_id = ANY(v_members);

    -- segments.dirty.mark: the members of the events written now, in id order.
    INSERT INTO segment_dirty_members (member_id, since)
    SELECT m.member_id, v_now FROM unnest(v_members) WITH ORDINALITY AS m(member_id, ord) ORDER BY m.ord
    ON CONFLICT ON CONSTRAINT pk_segment_dirty_members DO UPDATE SET since = excluded.since;

    RETURN QUERY
    SELECT d.i,
           CASE WHEN w.id IS NOT NULL THEN 'created' WHEN l.status IS NOT NULL THEN l.status ELSE d.status END,
           coalesce(w.id, l.id, d.id),
           CASE WHEN l.status IS NOT NULL THEN l.member_id ELSE d.member_id END,
           d.detail
      FROM unnest(d_i, d_status, d_id, d_member, d_detail) AS d(i, status, id, member_id, detail)
      LEFT JOIN unnest(w_i, w_id) AS w(i, id) ON w.i = d.i
      LEFT JOIN unnest(l_i, l_status, l_id, l_member) AS l(i, status, id, member_id) ON l.i = d.i
     ORDER BY d.i;
END
$fn$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS orchard_ingest_events(text, text, text[], text[], text, boolean, jsonb)")
