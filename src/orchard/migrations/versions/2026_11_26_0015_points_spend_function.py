"""orchard_points_spend(): a point redemption in one round trip on PostgreSQL (loyalty.spend_pg)

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-26 10:00:00

The thin HTTP path for `POST /api/v1/members/{id}/points/spend` calls this function once per request:
credential, permission, member scope, store code, replay check, account lock, lot selection, entry,
lot updates, allocations, audit row and the segments' dirty mark. It writes exactly the rows
`loyalty.ledger.post` writes for a spend (tests/loyalty/test_spend_pg.py compares them) and returns a
status the route turns into the same response. PL/pgSQL rather than one statement with data-modifying
CTEs because every statement of a VOLATILE function takes a new snapshot under READ COMMITTED: the lots
are read after the account lock is granted, so they include what the spend that held the lock wrote.
In one statement every CTE shares the snapshot taken before the lock wait, and two concurrent spends
would plan on the same lots. Nothing is written before the last check, so a refusal leaves no trace;
the one error raised (a lot changed under the lock: `points.retry`) rolls the whole call back.

PostgreSQL only (SQLite has no stored functions and keeps the service path). A change to the spend's
rows (the expiry columns of another branch, say) needs a new revision with CREATE OR REPLACE.
"""
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

FUNCTION = r"""
CREATE OR REPLACE FUNCTION orchard_points_spend(
    p_credential_kind text,     -- 'apikey' | 'token' (auth.secrets prefixes)
    p_credential_hash text,     -- secret_hash(credential)
    p_spend_roles text[],       -- the roles holding points:spend (auth.roles.ROLE_PERMS)
    p_scoped_roles text[],      -- auth.roles.STORE_SCOPED
    p_member_id bigint,         -- as in the path (a merged member resolves to the survivor)
    p_hash_member_id bigint,    -- the member id p_body_hash was computed for
    p_body_hash text,           -- ledger.Command.body_hash()
    p_amount bigint,            -- points to spend, > 0
    p_reason text,
    p_source text,
    p_external_id text,
    p_store_code text,          -- NULL: none given
    OUT status text,            -- ok | replay | bad_api_key | bad_token | forbidden | member_not_found |
                                -- store_unknown | store_not_store | store_outside | rehash | id_reused |
                                -- insufficient
    OUT role text,              -- forbidden: the caller's role
    OUT unit_kind text,         -- store_not_store: what the code names
    OUT resolved_member_id bigint,  -- rehash: the live member the hash must name
    OUT available bigint,       -- insufficient: the points spendable now
    OUT id bigint, OUT member_id bigint, OUT kind text, OUT amount bigint, OUT balance_after bigint,
    OUT reason text, OUT source text, OUT external_id text, OUT actor text, OUT explanation jsonb,
    OUT store_id bigint, OUT order_id bigint, OUT created_at timestamptz)
LANGUAGE plpgsql VOLATILE
AS $fn$
#variable_conflict use_column
DECLARE
    v_now timestamptz := now();
    v_actor text;
    v_scoped boolean;
    v_stores bigint[] := '{}';
    v_key record;
    v_staff record;
    v_member record;
    v_member_id bigint;
    v_store_id bigint;
    v_unit record;
    v_prior points_entries%ROWTYPE;
    v_entry points_entries%ROWTYPE;
    v_balance bigint;
    v_locked boolean;
    v_lots bigint[];
    v_takes bigint[];
    v_done integer;
BEGIN
    -- Who is calling (auth.service.principal_for): checked here, in the same statement as the spend,
    -- so a revoked key or a deactivated account is refused on its very next request in every worker.
    IF p_credential_kind = 'apikey' THEN
        SELECT k.id, k.role, k.store_id, k.revoked_at INTO v_key FROM api_keys k WHERE k.key_hash = p_credential_hash;
        IF NOT FOUND OR v_key.revoked_at IS NOT NULL THEN
            status := 'bad_api_key';
            RETURN;
        END IF;
        role := v_key.role;
        v_actor := 'apikey:' || v_key.id;
        v_scoped := v_key.store_id IS NOT NULL OR v_key.role = ANY(p_scoped_roles);
        IF v_key.store_id IS NOT NULL THEN
            v_stores := ARRAY[v_key.store_id];
        END IF;
    ELSE
        SELECT s.id, s.role, s.is_active, t.expires_at INTO v_staff
          FROM access_tokens t JOIN staff s ON s.id = t.staff_id WHERE t.token_hash = p_credential_hash;
        IF NOT FOUND OR v_staff.expires_at < v_now OR NOT v_staff.is_active THEN
            status := 'bad_token';
            RETURN;
        END IF;
        role := v_staff.role;
        v_actor := 'staff:' || v_staff.id;
        v_scoped := v_staff.role = ANY(p_scoped_roles);
        IF v_scoped THEN  -- org.service.stores_under: the stores at or below the staff's units
            WITH RECURSIVE under(id) AS (
                SELECT sc.org_unit_id FROM staff_scopes sc WHERE sc.staff_id = v_staff.id
                UNION SELECT o.id FROM org_units o JOIN under u ON o.parent_id = u.id)
            SELECT coalesce(array_agg(o.id), '{}') INTO v_stores FROM under u JOIN org_units o ON o.id = u.id
             WHERE o.kind = 'store';
        END IF;
    END IF;
    IF NOT (role = ANY(p_spend_roles)) THEN
        status := 'forbidden';
        RETURN;
    END IF;
    role := NULL;

    -- members.scope.get_visible: one merge hop, then the store scope (out of scope reads as absent).
    SELECT m.id, m.merged_into_id, m.home_store_id INTO v_member FROM members m WHERE m.id = p_member_id;
    IF FOUND AND v_member.merged_into_id IS NOT NULL THEN
        SELECT m.id, m.merged_into_id, m.home_store_id INTO v_member FROM members m
         WHERE m.id = v_member.merged_into_id;
    END IF;
    IF v_member.id IS NULL OR (v_scoped AND NOT coalesce(v_member.home_store_id = ANY(v_stores), false)) THEN
        status := 'member_not_found';
        RETURN;
    END IF;
    v_member_id := v_member.id;

    -- loyalty.endpoints.store_for
    IF p_store_code IS NOT NULL THEN
        SELECT o.id, o.kind INTO v_unit FROM org_units o WHERE o.code = p_store_code;
        IF NOT FOUND THEN
            status := 'store_unknown';
            RETURN;
        ELSIF v_unit.kind <> 'store' THEN
            status := 'store_not_store';
            unit_kind := v_unit.kind;
            RETURN;
        ELSIF v_scoped AND NOT (v_unit.id = ANY(v_stores)) THEN
            status := 'store_outside';
            RETURN;
        END IF;
        v_store_id := v_unit.id;
    END IF;

    IF v_member_id <> p_hash_member_id THEN  -- the fingerprint names the live member: the caller recomputes it
        status := 'rehash';
        resolved_member_id := v_member_id;
        RETURN;
    END IF;

    -- ledger.post: the replay check, then (for a new command) the account lock and the check again.
    <<work>>
    BEGIN
        SELECT * INTO v_prior FROM points_entries e WHERE e.source = p_source AND e.external_id = p_external_id;
        EXIT work WHEN v_prior.id IS NOT NULL;
        FOR attempt IN 1..2 LOOP
            SELECT a.balance INTO v_balance FROM points_accounts a WHERE a.member_id = v_member_id FOR UPDATE;
            v_locked := FOUND;
            -- A new snapshot from here on: whatever committed while we waited for the lock is visible.
            SELECT * INTO v_prior FROM points_entries e WHERE e.source = p_source AND e.external_id = p_external_id;
            EXIT work WHEN v_prior.id IS NOT NULL;
            -- ledger.spendable: soonest-expiring first, never-expiring last, oldest first among equals;
            -- nothing pending, nothing past its expiry. Ties cannot occur (l.id is last), so the window's
            -- RANGE frame is a running sum.
            WITH s AS (
                SELECT l.id, l.remaining, sum(l.remaining) OVER w AS run, row_number() OVER w AS ord
                  FROM points_lots l
                 WHERE l.member_id = v_member_id AND l.remaining > 0
                   AND (l.expires_at IS NULL OR l.expires_at > v_now)
                   AND (l.pending_until IS NULL OR l.pending_until <= v_now)
                WINDOW w AS (ORDER BY l.expires_at IS NULL, l.expires_at, l.id))
            SELECT coalesce(max(s.run), 0),
                   array_agg(s.id ORDER BY s.ord) FILTER (WHERE s.run - s.remaining < p_amount),
                   array_agg(least(s.remaining, p_amount - (s.run - s.remaining)) ORDER BY s.ord)
                       FILTER (WHERE s.run - s.remaining < p_amount)
              INTO available, v_lots, v_takes FROM s;
            IF available < p_amount THEN
                status := 'insufficient';
                RETURN;
            END IF;
            available := NULL;
            EXIT WHEN v_locked;
            -- No account yet (ledger.lock_account creates one): create it, then lock and plan again.
            INSERT INTO points_accounts (member_id, balance, debt, updated_at) VALUES (v_member_id, 0, 0, v_now)
                ON CONFLICT ON CONSTRAINT pk_points_accounts DO NOTHING;
        END LOOP;
        IF NOT v_locked THEN
            RAISE EXCEPTION 'points.retry' USING DETAIL = 'the points account could not be locked';
        END IF;

        -- ledger._debit and _entry. ON CONFLICT: the same id committed meanwhile by a command for another
        -- member (ledger.post's IntegrityError branch) is a replay or an id reuse like any other.
        INSERT INTO points_entries (member_id, kind, amount, balance_after, reason, source, external_id, body_hash,
                                    actor, explanation, store_id, order_id, created_at)
        VALUES (v_member_id, 'spend', -p_amount, v_balance - p_amount, p_reason, p_source, p_external_id,
                p_body_hash, v_actor, '{}'::jsonb, v_store_id, NULL, v_now)
        ON CONFLICT ON CONSTRAINT uq_points_entries_source_external_id DO NOTHING
        RETURNING * INTO v_entry;
        IF v_entry.id IS NULL THEN
            SELECT * INTO v_prior FROM points_entries e WHERE e.source = p_source AND e.external_id = p_external_id;
            IF v_prior.id IS NULL THEN
                RAISE EXCEPTION 'points.retry' USING DETAIL = 'a concurrent command with this id rolled back';
            END IF;
            EXIT work;
        END IF;
        UPDATE points_accounts a SET balance = v_balance - p_amount, updated_at = v_now
         WHERE a.member_id = v_member_id;
        -- Relative and guarded, as in ledger._debit: even a writer that skipped the lock cannot overdraw a lot.
        UPDATE points_lots l SET remaining = l.remaining - p.take
          FROM unnest(v_lots, v_takes) AS p(lot_id, take)
         WHERE l.id = p.lot_id AND l.remaining >= p.take;
        GET DIAGNOSTICS v_done = ROW_COUNT;
        IF v_done <> cardinality(v_lots) THEN
            RAISE EXCEPTION 'points.retry' USING DETAIL = 'a points lot changed underneath this debit';
        END IF;
        INSERT INTO points_allocations (entry_id, lot_id, amount)
        SELECT v_entry.id, p.lot_id, p.take FROM unnest(v_lots, v_takes) WITH ORDINALITY AS p(lot_id, take, ord)
         ORDER BY p.ord;
        INSERT INTO audit_log (at, actor, action, entity, entity_id, data)
        VALUES (v_now, v_actor, 'points.spend', 'member', v_member_id::text,
                jsonb_build_object('entry_id', v_entry.id, 'amount', v_entry.amount, 'reason', p_reason,
                                   'source', p_source, 'external_id', p_external_id));
        -- segments.dirty.mark: the member's real-time segments re-check their points.
        INSERT INTO segment_dirty_members (member_id, since) VALUES (v_member_id, v_now)
            ON CONFLICT ON CONSTRAINT pk_segment_dirty_members DO UPDATE SET since = excluded.since;
        status := 'ok';
    END work;

    IF status IS NULL THEN  -- left `work` with a prior entry of this (source, external_id)
        IF v_prior.body_hash <> p_body_hash THEN
            status := 'id_reused';
            RETURN;
        END IF;
        status := 'replay';
        v_entry := v_prior;
    END IF;
    id := v_entry.id;
    member_id := v_entry.member_id;
    kind := v_entry.kind;
    amount := v_entry.amount;
    balance_after := v_entry.balance_after;
    reason := v_entry.reason;
    source := v_entry.source;
    external_id := v_entry.external_id;
    actor := v_entry.actor;
    explanation := v_entry.explanation;
    store_id := v_entry.store_id;
    order_id := v_entry.order_id;
    created_at := v_entry.created_at;
END
$fn$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS orchard_points_spend(text, text, text[], text[], bigint, bigint, text, "
                   "bigint, text, text, text, text)")
