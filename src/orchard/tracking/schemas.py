"""Request and response shapes of the Segment-compatible routes.

The request models document the tracking spec's envelope and are checked before mapping (types of
the common fields); everything else a message may carry is allowed and read by `mapping`. They are
kept flat (no nested models) so their JSON schema can be inlined in the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

MAX_BATCH = 1000

Time = Annotated[StrictStr, Field(max_length=64, json_schema_extra={"format": "date-time"},
                                  description="ISO 8601; without an offset it is read in the tenant's zone")]
UserId = Annotated[StrictStr, Field(max_length=255)] | StrictInt
AnonymousId = Annotated[StrictStr, Field(max_length=128)] | StrictInt
Text = Annotated[StrictStr, Field(max_length=200)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: StrictStr | None = Field(default=None, description="implied by the route; ignored here")
    messageId: Annotated[StrictStr, Field(max_length=128)] | None = Field(
        default=None, description="the idempotency key of the message (external_id in Orchard)")
    timestamp: Time | None = None
    originalTimestamp: Time | None = None
    receivedAt: Time | None = None
    sentAt: Time | None = None
    context: dict[str, Any] | None = Field(default=None, description="`context.traits` are read as traits")
    integrations: dict[str, Any] | None = Field(
        default=None, description='`{"Orchard": false}` (or `{"All": false}`) makes Orchard ignore the message')


class _UserMessage(_Message):
    userId: UserId | None = Field(default=None, description="identity kind `external_id`")
    anonymousId: AnonymousId | None = Field(default=None, description="identity kind `anonymous_id`")


class IdentifyIn(_UserMessage):
    traits: dict[str, Any] | None = Field(default=None, examples=[{
        "phone": "13812341234", "email": "li@example.com", "lastName": "李", "firstName": "娜", "gender": "女",
        "birthday": "1990-05-01", "address": {"city": "上海"}}])


class TrackIn(_UserMessage):
    event: Annotated[StrictStr, Field(min_length=1, max_length=200, examples=["Order Completed"])]
    properties: dict[str, Any] | None = Field(default=None, examples=[{
        "order_id": "A-1001", "total": "128.00", "store_code": "SH001",
        "products": [{"sku": "TEA-1", "name": "龙井", "category": "茶叶", "price": 64, "quantity": 2}]}])


class PageIn(_UserMessage):
    name: Text | None = None
    category: Text | None = None
    properties: dict[str, Any] | None = None


class ScreenIn(PageIn):
    pass


class AliasIn(_Message):
    userId: UserId = Field(description="the new id: the member keeping both")
    previousId: AnonymousId = Field(description="the id to link (as external_id and anonymous_id)")


class GroupIn(_UserMessage):
    groupId: UserId | None = None
    traits: dict[str, Any] | None = None


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    batch: list[dict[str, Any]] = Field(
        max_length=MAX_BATCH,
        description="messages, each with `type`: identify, track, page, screen, alias or group")
    context: dict[str, Any] | None = Field(default=None, description="merged into every message's context")
    integrations: dict[str, Any] | None = None
    sentAt: Time | None = None
    writeKey: StrictStr | None = Field(default=None,
                                       description="ignored: authenticate with the Authorization header")


class MessageResult(BaseModel):
    index: int
    messageId: str | None = None
    type: str | None = None
    ok: bool
    #: created | duplicate | pending (refund waiting for its order) | updated | linked | unchanged |
    #: no_member (identify of an unknown anonymous id) | ignored (group, integrations off)
    status: str | None = None
    #: What the message became: order, refund, event or member.
    kind: str | None = None
    id: int | None = None
    member_id: int | None = None
    member_created: bool = False
    detail: str | None = None
    #: The problem document of a rejected message.
    error: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)


class TrackingResult(BaseModel):
    """`success` is true whenever the request was accepted (Segment clients look only at the status);
    each message's fate is in `results`, in order."""

    success: bool = True
    accepted: int
    rejected: int
    results: list[MessageResult]
