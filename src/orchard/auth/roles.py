"""Roles and what each may do. Pure data: one table read by `deps.require`.

Store-scoped roles (store_manager, clerk) see only members whose home store is in their scope, and
like customer service they see phone numbers masked. HQ roles and integrators see every member.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    admin = "admin"
    hq_ops = "hq_ops"
    store_manager = "store_manager"
    clerk = "clerk"
    service = "service"
    integrator = "integrator"


class Perm(StrEnum):
    members_read = "members:read"
    members_write = "members:write"
    members_merge = "members:merge"
    members_consent = "members:consent"
    members_notes = "members:notes"
    members_tags = "members:tags"
    events_ingest = "events:ingest"
    events_read = "events:read"
    org_read = "org:read"
    org_write = "org:write"
    staff_manage = "staff:manage"
    #: Bulk file imports over HTTP (upload, job status, error reports). An import writes for every
    #: store and its error report holds raw rows, so only unscoped, unmasked roles get it, and a
    #: store-bound API key is refused even with this permission (imports.endpoints).
    imports = "imports:run"
    #: Redeem a member's points (POS, online checkout).
    points_spend = "points:spend"
    #: Manual points corrections (reason required, audited).
    points_adjust = "points:adjust"
    #: Create and edit earning rules and the tier program (audited).
    points_rules = "points:rules"
    #: Points liability and cross-store settlement reports (store managers see their stores' rows).
    points_reports = "points:reports"
    #: Add and retire benefits in the library (store managers: their stores' own, within HQ's share).
    benefits_manage = "benefits:manage"
    #: Create and change coupon templates, issue in bulk, void coupons (audited).
    coupons_manage = "coupons:manage"
    #: Issue one coupon to a member (a clerk's quick issue with a reason, a journey, a mini-program).
    coupons_issue = "coupons:issue"
    #: Redeem a coupon at a POS or online, and undo a redemption when the order is cancelled.
    coupons_redeem = "coupons:redeem"
    #: Preview definitions and read saved segments (store staff: segments their stores own).
    segments_read = "segments:read"
    #: Create, change, refresh and archive saved segments and rule tags (audited).
    segments_manage = "segments:manage"
    #: Set the scoring policy: lifecycle thresholds, RFM scoring, value-tier shares (audited).
    scoring_policy = "scoring:policy"
    #: Journeys, message templates, the contact policy and the message lists (audited).
    journeys_manage = "journeys:manage"


_FRONT_LINE = {Perm.members_read, Perm.members_write, Perm.members_consent, Perm.members_notes,
               Perm.members_tags, Perm.events_read, Perm.org_read}

ROLE_PERMS: dict[Role, frozenset[Perm]] = {
    Role.admin: frozenset(Perm),
    Role.hq_ops: frozenset(_FRONT_LINE | {Perm.members_merge, Perm.events_ingest, Perm.imports, Perm.points_spend,
                                          Perm.points_adjust, Perm.points_rules, Perm.points_reports,
                                          Perm.benefits_manage, Perm.coupons_manage, Perm.coupons_issue,
                                          Perm.coupons_redeem, Perm.segments_read, Perm.segments_manage,
                                          Perm.scoring_policy, Perm.journeys_manage}),
    Role.store_manager: frozenset(_FRONT_LINE | {Perm.points_spend, Perm.points_adjust, Perm.points_reports,
                                                 Perm.benefits_manage, Perm.coupons_issue, Perm.coupons_redeem,
                                                 Perm.segments_read, Perm.segments_manage}),
    Role.clerk: frozenset(_FRONT_LINE | {Perm.points_spend, Perm.coupons_issue, Perm.coupons_redeem}),
    Role.service: frozenset(_FRONT_LINE - {Perm.members_write}),
    Role.integrator: frozenset({Perm.members_read, Perm.members_write, Perm.members_consent,
                                Perm.events_ingest, Perm.events_read, Perm.org_read, Perm.imports,
                                Perm.points_spend, Perm.coupons_issue, Perm.coupons_redeem}),
}

STORE_SCOPED = frozenset({Role.store_manager, Role.clerk})
MASKED = frozenset({Role.store_manager, Role.clerk, Role.service})
