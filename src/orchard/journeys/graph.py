"""The journey graph: one trigger, then named steps linked by `next`; validated before it is saved.

```json
{"trigger": {"type": "event", "event": "sign_up"},
 "entry": "wait3",
 "exit_on": {"event": "$order"},
 "steps": {
   "wait3":  {"type": "wait", "days": 3, "next": "check"},
   "check":  {"type": "condition", "if": {"field": "order_count", "op": "eq", "value": 0},
              "then": "nudge", "else": null},
   "nudge":  {"type": "send", "template": "first_order_sms", "next": null}}}
```

Triggers (found by `triggers.py`, each kind one set-based statement):

* `event` — a behaviour event (with `where` property filters), or a source table: `$order` (a paid
  order), `$tier_changed` (`direction` up / down / any, optional `to_level` code), `$points_earned`
  (`min_points`). Only events newer than `max_age_hours` start a run. A field that does not apply to
  the event (e.g. `min_points` on `$order`) is refused with its path.
* `segment_entry` / `segment_exit` — a member's spell in the segment starts / ends.
* `absence` — nothing of `absent` within `days` after the `after` anchor (joined, first_order,
  last_order, last_visit, last_login, last_event).
* `date` — `days_before` the target day: `birthday`, `anniversary` (of joining, from the first year),
  `points_expiring`, `coupon_expiring` (an unused coupon whose last usable day it is),
  `repurchase_due` (last order + the member's typical interval between orders).
* `schedule` — `every` day / week (`weekday` 1 = Monday … 7) / month (`day`; past the month's end
  means its last day) `at` a local time: the segment's current members (everyone live without
  `segment`) enter once per occurrence.

Steps: `wait` (days / hours, optionally until a local time of day), `wait_event` (with
`timeout_hours` and `timeout_next`), `condition` (any segment definition, evaluated at that moment),
`split` (percentages, optional held-out `control_percent`), `send` (a published template, `fallback`
templates tried when the first is suppressed for want of consent or recipient), `coupon`, `points`,
`tag` (add / remove), `task` (a call-back or WeCom task for the home store), `webhook` (a signed call
to an integrator's URL, through the outbox), `exit`. A `next` of null ends the run (completed).
`message_cap` limits what one journey sends one member (`{"max": 2, "days": 30}`).
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from orchard.errors import InvalidInput
from orchard.segments import language as seglang

StepId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]
Next = StepId | None


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: Event triggers read from these tables rather than from behaviour events.
EVENT_SOURCES = ("$order", "$tier_changed", "$points_earned")
#: Fields of an event trigger that apply to one source only (checked in `parse`, with their path).
_EVENT_ONLY = {"direction": "$tier_changed", "to_level": "$tier_changed", "min_points": "$points_earned"}
HHMM = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]


class EventTrigger(_M):
    type: Literal["event"]
    event: Annotated[str, Field(min_length=1, max_length=64)]
    where: list[seglang.PropFilter] = []
    #: Older events (history loaded by an import, a POS that syncs late) do not start the journey.
    max_age_hours: Annotated[int, Field(ge=1, le=24 * 30)] = 24
    #: $tier_changed: to a higher rank (up), a lower one (down), or any change (the default).
    direction: Literal["up", "down", "any"] | None = None
    #: $tier_changed: only changes to this tier level (its code).
    to_level: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    #: $points_earned: only earn entries of at least this many points.
    min_points: Annotated[int, Field(ge=1, le=100_000_000)] | None = None


class SegmentTrigger(_M):
    type: Literal["segment_entry"]
    segment: Annotated[str, Field(min_length=1, max_length=64)]


class SegmentExitTrigger(_M):
    type: Literal["segment_exit"]
    segment: Annotated[str, Field(min_length=1, max_length=64)]


class AbsenceTrigger(_M):
    type: Literal["absence"]
    #: last_login / last_event: "no login (no activity at all) for N days".
    after: Literal["joined", "first_order", "last_order", "last_visit", "last_login", "last_event"]
    absent: Annotated[str, Field(min_length=1, max_length=64, description="an event name or $order")]
    days: Annotated[int, Field(ge=1, le=365)]


class DateTrigger(_M):
    type: Literal["date"]
    field: Literal["birthday", "anniversary", "points_expiring", "coupon_expiring", "repurchase_due"]
    days_before: Annotated[int, Field(ge=0, le=90)]


class ScheduleTrigger(_M):
    """E.g. every month on the member day (the 8th) at 10:00, to segment vip."""

    type: Literal["schedule"]
    #: Omitted: every live member.
    segment: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    every: Literal["day", "week", "month"]
    #: week: ISO weekday, 1 = Monday … 7 = Sunday.
    weekday: Annotated[int, Field(ge=1, le=7)] | None = None
    #: month: day of the month; a day past the month's end means its last day.
    day: Annotated[int, Field(ge=1, le=31)] | None = None
    #: Local time (tenant zone).
    at: HHMM


Trigger = Annotated[EventTrigger | SegmentTrigger | SegmentExitTrigger | AbsenceTrigger | DateTrigger
                    | ScheduleTrigger, Field(discriminator="type")]


class Wait(_M):
    type: Literal["wait"]
    days: Annotated[int, Field(ge=0, le=365)] = 0
    hours: Annotated[int, Field(ge=0, le=24 * 365)] = 0
    #: Then on to this local time of day (e.g. "10:00"): the first such moment after the wait.
    until_time: HHMM | None = None
    next: Next = None


class WaitEvent(_M):
    type: Literal["wait_event"]
    event: Annotated[str, Field(min_length=1, max_length=64)]
    timeout_hours: Annotated[int, Field(ge=1, le=24 * 90)]
    next: Next = None
    timeout_next: Next = None


class Condition(_M):
    type: Literal["condition"]
    if_: Any = Field(alias="if")
    then: Next = None
    else_: Next = Field(None, alias="else")
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Variant(_M):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,32}$")]
    percent: Annotated[int, Field(ge=1, le=100)]
    next: Next = None


class Split(_M):
    type: Literal["split"]
    variants: Annotated[list[Variant], Field(min_length=1, max_length=10)]
    #: Held out: these members receive nothing from here on, and are tracked for comparison.
    control_percent: Annotated[int, Field(ge=0, le=50)] = 0

    @model_validator(mode="after")
    def _sum(self) -> Split:
        if sum(v.percent for v in self.variants) + self.control_percent != 100:
            raise ValueError("variant percentages and control_percent must add up to 100")
        if len({v.name for v in self.variants}) != len(self.variants) or "control" in {v.name for v in self.variants}:
            raise ValueError("variant names must be distinct and not 'control'")
        return self


class Send(_M):
    type: Literal["send"]
    template: Annotated[str, Field(min_length=1, max_length=64)]
    fallback: list[Annotated[str, Field(min_length=1, max_length=64)]] = []
    #: Try first the template (of `template` + `fallback`) on the member's own preferred channel.
    prefer_member_channel: bool = False
    next: Next = None


class CouponStep(_M):
    type: Literal["coupon"]
    template_id: Annotated[int, Field(ge=1)]
    next: Next = None


class PointsStep(_M):
    type: Literal["points"]
    amount: Annotated[int, Field(ge=1, le=1_000_000)]
    reason: Annotated[str, Field(min_length=1, max_length=200)]
    next: Next = None


class TagStep(_M):
    type: Literal["tag"]
    add: list[Annotated[str, Field(min_length=1, max_length=64)]] = []
    remove: list[Annotated[str, Field(min_length=1, max_length=64)]] = []
    next: Next = None


class TaskStep(_M):
    """A task for the member's home store: a service call-back (回访) or a WeCom one-to-one message
    for the shopping guide; the staff member marks it done (the run goes on without waiting)."""

    type: Literal["task"]
    kind: Literal["callback", "wecom"]
    title: Annotated[str, Field(min_length=1, max_length=200)]
    body: Annotated[str, Field(max_length=2000)] | None = None
    due_hours: Annotated[int, Field(ge=1, le=24 * 30)] = 48
    next: Next = None


#: Keys of a webhook step's body that Orchard fills; a static `payload` may not reuse them.
WEBHOOK_RESERVED = frozenset({"member_id", "journey", "run_id", "step", "trigger", "event", "message_id"})


class WebhookStep(_M):
    """Call an integrator's URL (Standard Webhooks signed) through the outbox: the step only decides
    the call, a worker makes it with retries, so a slow or down receiver never holds a run up."""

    type: Literal["webhook"]
    #: http(s), without credentials (a secret in a URL ends up in logs; the signature authenticates).
    url: Annotated[str, Field(min_length=1, max_length=255)]
    #: Extra static fields added to the body next to the member, journey, run, step and trigger.
    payload: dict[str, Any] = {}
    next: Next = None

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 — raises on a malformed port
        except ValueError:
            raise ValueError("not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials may not be part of the URL (the request is signed instead)")
        if any(c.isspace() for c in url):
            raise ValueError("a URL may not contain spaces")
        return url

    @field_validator("payload")
    @classmethod
    def _payload(cls, payload: dict[str, Any]) -> dict[str, Any]:
        if clash := sorted(WEBHOOK_RESERVED & set(payload)):
            raise ValueError("reserved key(s) filled by Orchard: " + ", ".join(clash))
        if len(json.dumps(payload, ensure_ascii=False, default=str)) > 4000:
            raise ValueError("at most 4000 characters of JSON")
        return payload


class Exit(_M):
    type: Literal["exit"]


Step = Annotated[
    Annotated[Wait, Tag("wait")] | Annotated[WaitEvent, Tag("wait_event")] | Annotated[Condition, Tag("condition")]
    | Annotated[Split, Tag("split")] | Annotated[Send, Tag("send")] | Annotated[CouponStep, Tag("coupon")]
    | Annotated[PointsStep, Tag("points")] | Annotated[TagStep, Tag("tag")] | Annotated[TaskStep, Tag("task")]
    | Annotated[WebhookStep, Tag("webhook")] | Annotated[Exit, Tag("exit")],
    Discriminator(lambda v: v.get("type") if isinstance(v, dict) else getattr(v, "type", None),
                  custom_error_type="step_type",
                  custom_error_message="type must be one of wait, wait_event, condition, split, send, coupon, "
                                       "points, tag, task, webhook, exit"),
]


class ExitOn(_M):
    """Conversion: the run exits (converted) when the member does this after entering."""

    event: Annotated[str, Field(min_length=1, max_length=64, description="an event name or $order")]


class MessageCap(_M):
    """At most `max` messages from this journey to one member in `days` days (reason `cap.journey`),
    on top of the contact policy's global caps; webhook calls do not count."""

    max: Annotated[int, Field(ge=1, le=1000)]
    days: Annotated[int, Field(ge=1, le=365)]


class Graph(_M):
    trigger: Trigger
    entry: StepId
    steps: Annotated[dict[StepId, Step], Field(min_length=1, max_length=100)]
    #: Who may enter at all (a segment definition checked at entry).
    entry_condition: Any = None
    exit_on: ExitOn | None = None
    message_cap: MessageCap | None = None


_ADAPTER = TypeAdapter(Graph)


def parse(data: Any) -> Graph:
    """The typed graph, or `InvalidInput` naming the path of every shape problem."""
    try:
        graph = _ADAPTER.validate_python(data)
    except ValidationError as exc:
        errors = [{"field": _path(e["loc"]), "reason": e["msg"]} for e in exc.errors(include_url=False)]
        raise InvalidInput("the journey graph is not valid", errors=errors, code="journey.invalid") from None
    _trigger(graph.trigger)
    _links(graph)
    return graph


_STEP_TAGS = {"wait", "wait_event", "condition", "split", "send", "coupon", "points", "tag", "task", "webhook",
              "exit"}
_TRIGGER_TAGS = {"event", "segment_entry", "segment_exit", "absence", "date", "schedule"}


def _path(loc: tuple[Any, ...]) -> str:
    """The JSON path of an error, without the union tags pydantic puts in the location (only where a
    tag can be: right after a step id or `trigger`, so a step *named* like a type keeps its name, and a
    field named `event` is a real part of the path)."""
    parts = list(loc)
    if len(parts) > 2 and parts[0] == "steps" and parts[2] in _STEP_TAGS:
        del parts[2]
    elif len(parts) > 1 and parts[0] == "trigger" and parts[1] in _TRIGGER_TAGS:
        del parts[1]
    return "$." + ".".join(str(p) for p in parts)


def _trigger(trigger: Any) -> None:
    """What a field-by-field check cannot see: which fields apply to which event or schedule."""
    if isinstance(trigger, EventTrigger):
        if trigger.event.startswith("$") and trigger.event not in EVENT_SOURCES:
            raise InvalidInput.field("$.trigger.event", "a $ event is one of " + ", ".join(EVENT_SOURCES))
        for name, only in _EVENT_ONLY.items():
            if getattr(trigger, name) is not None and trigger.event != only:
                raise InvalidInput.field(f"$.trigger.{name}", f"only applies to {only} triggers")
        if trigger.where and trigger.event.startswith("$"):
            raise InvalidInput.field("$.trigger.where",
                                     f"property filters apply to behaviour events, not to {trigger.event}")
    if isinstance(trigger, ScheduleTrigger):
        need = {"day": None, "week": "weekday", "month": "day"}[trigger.every]
        for name in ("weekday", "day"):
            given = getattr(trigger, name) is not None
            if name == need and not given:
                raise InvalidInput.field(f"$.trigger.{name}", f"required when every is {trigger.every}")
            if name != need and given:
                raise InvalidInput.field(f"$.trigger.{name}", f"does not apply when every is {trigger.every}")


def _links(graph: Graph) -> None:
    if graph.entry not in graph.steps:
        raise InvalidInput.field("$.entry", f"no step named {graph.entry!r}")
    for sid, step in graph.steps.items():
        for name, target in targets(step):
            if target is not None and target not in graph.steps:
                raise InvalidInput.field(f"$.steps.{sid}.{name}", f"no step named {target!r}")
    # Every step must be reachable, and no cycle may avoid a wait (a run would spin forever).
    reachable: set[str] = set()
    stack = [graph.entry]
    while stack:
        sid = stack.pop()
        if sid in reachable:
            continue
        reachable.add(sid)
        stack.extend(t for _, t in targets(graph.steps[sid]) if t)
    if unreachable := sorted(set(graph.steps) - reachable):
        raise InvalidInput.field("$.steps", "unreachable step(s): " + ", ".join(unreachable))
    for sid in graph.steps:
        _no_instant_cycle(graph, sid)


def _no_instant_cycle(graph: Graph, start: str) -> None:
    stack = [(start, [start])]
    while stack:
        sid, path = stack.pop()
        step = graph.steps[sid]
        if isinstance(step, Wait | WaitEvent) and sid != start:
            continue
        for _, nxt in targets(step):
            if nxt is None:
                continue
            if nxt == start and not any(isinstance(graph.steps[p], Wait | WaitEvent) for p in path):
                raise InvalidInput.field(f"$.steps.{start}", "a loop without a wait: " + " → ".join([*path, nxt]))
            if nxt not in path:
                stack.append((nxt, [*path, nxt]))


def targets(step: Any) -> list[tuple[str, str | None]]:
    if isinstance(step, Condition):
        return [("then", step.then), ("else", step.else_)]
    if isinstance(step, Split):
        return [(f"variants[{i}].next", v.next) for i, v in enumerate(step.variants)]
    if isinstance(step, WaitEvent):
        return [("next", step.next), ("timeout_next", step.timeout_next)]
    if isinstance(step, Exit):
        return []
    return [("next", step.next)]


def dump(graph: Graph) -> dict[str, Any]:
    return _ADAPTER.dump_python(graph, mode="json", by_alias=True, exclude_defaults=True)
