"""Imports every domain's models so `Base.metadata` is complete (Alembic, tests)."""

from orchard.audit.models import AuditEntry  # noqa: F401
from orchard.auth.models import AccessToken, ApiKey, Staff, StaffScope  # noqa: F401
from orchard.coupons.models import Coupon, CouponBatch, CouponRedemption, CouponTemplate  # noqa: F401
from orchard.db import Base  # noqa: F401
from orchard.events.models import Event, Order, OrderLine, Refund, RefundLine  # noqa: F401
from orchard.idempotency.models import IdempotencyRecord  # noqa: F401
from orchard.identity.models import Identity  # noqa: F401
from orchard.imports.models import ImportJob  # noqa: F401
from orchard.journeys.models import (  # noqa: F401
    Journey,
    JourneyLog,
    JourneyRun,
    JourneyVersion,
    StaffTask,
    SubscribeGrant,
)
from orchard.loyalty.models import PointsAccount, PointsAllocation, PointsEntry, PointsLot  # noqa: F401
from orchard.members.models import (  # noqa: F401
    Consent,
    ConsentChange,
    Member,
    MemberAggregate,
    MemberMerge,
    MemberNote,
    MemberTag,
    MergeCandidate,
    Tag,
    TagChange,
)
from orchard.messaging.models import ContactPolicy, Message, MessageTemplate, ShortLink  # noqa: F401
from orchard.org.models import OrgUnit  # noqa: F401
from orchard.scheduler.models import ScheduledJob  # noqa: F401
from orchard.scoring.models import LifecycleChange, MemberLifecycle, MemberRfm, ScoringPolicy  # noqa: F401
from orchard.segments.models import (  # noqa: F401
    DirtyMember,
    Segment,
    SegmentFlip,
    SegmentMembership,
    SegmentSize,
)
