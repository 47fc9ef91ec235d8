"""All /api/v1 routers in one visible place."""

from fastapi import APIRouter

from orchard.auth.endpoints import router as auth_router
from orchard.coupons.endpoints import router as coupons_router
from orchard.coupons.template_endpoints import router as coupon_templates_router
from orchard.events.endpoints import router as events_router
from orchard.exports.endpoints import router as exports_router
from orchard.imports.endpoints import router as imports_router
from orchard.journeys.endpoints import router as journeys_router
from orchard.loyalty.benefit_endpoints import router as benefits_router
from orchard.loyalty.catalog_endpoints import router as catalog_router
from orchard.loyalty.endpoints import router as points_router
from orchard.loyalty.engagement_endpoints import router as engagement_router
from orchard.loyalty.flag_endpoints import router as points_flags_router
from orchard.loyalty.report_endpoints import router as points_reports_router
from orchard.loyalty.rule_endpoints import router as points_rules_router
from orchard.loyalty.tier_endpoints import router as tiers_router
from orchard.members.endpoints import router as members_router
from orchard.messaging.callback_endpoints import router as channel_callbacks_router
from orchard.org.endpoints import router as org_router
from orchard.scoring.endpoints import router as scoring_router
from orchard.segments.endpoints import router as segments_router
from orchard.segments.tag_endpoints import router as tags_router

api_router = APIRouter(prefix="/api/v1")
for router in (auth_router, org_router, members_router, events_router, exports_router, imports_router,
               points_rules_router, points_reports_router, points_router, tiers_router,
               engagement_router, points_flags_router, benefits_router, catalog_router, coupon_templates_router,
               coupons_router, segments_router, tags_router, scoring_router, journeys_router,
               channel_callbacks_router):
    api_router.include_router(router)
