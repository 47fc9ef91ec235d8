"""Orders and refunds (SPEC E1).

Refund rules: a full refund returns whatever of the order is not yet refunded; a line refund names
lines by line_no or sku with a quantity (default: all not yet refunded) and an amount (default: the
line's amount pro rata, the last unit taking the remainder so a line refunds exactly its amount);
an amount-only refund is not attributed to lines. Nothing may exceed what was paid. A refund whose
order is unknown is kept as 'pending' and applied when the order arrives; if it then turns out not
to fit the order it is marked 'rejected' with the reason, and the order still goes in.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from orchard.errors import InvalidInput
from orchard.events import aggregates
from orchard.events.models import Order, OrderLine, Refund, RefundLine
from orchard.events.schemas import OrderIn, RefundIn, RefundLineIn
from orchard.kit.clock import as_utc, utcnow
from orchard.loyalty import earning


def insert_order(session: Session, *, data: OrderIn, member_id: int, store_id: int | None, body_hash: str,
                 earn: bool = True) -> Order:
    """`earn`: the order earns points through the earning rules (bulk imports of history do not);
    any refund applied to it reverses what it earned either way."""
    lines = []
    for i, ln in enumerate(data.lines, start=1):
        amount = ln.amount_fen if ln.amount_fen is not None else ln.unit_price_fen * ln.quantity
        lines.append(dict(line_no=ln.line_no or i, sku=ln.sku, name=ln.name, category=ln.category,
                          quantity=ln.quantity, unit_price_fen=ln.unit_price_fen, amount_fen=amount))
    if len({ln["line_no"] for ln in lines}) != len(lines):
        raise InvalidInput.field("lines", "line numbers collide; give every line a line_no or none")
    amount = data.amount_fen if data.amount_fen is not None else sum(ln["amount_fen"] for ln in lines)
    paid_at = as_utc(data.paid_at)
    order = Order(source=data.source, external_id=data.external_id, body_hash=body_hash, member_id=member_id,
                  store_id=store_id, channel=data.channel, currency=data.currency, amount_fen=amount,
                  refunded_fen=0, status="paid", paid_at=paid_at, properties=data.properties)
    session.add(order)
    session.flush()
    if lines:
        session.execute(OrderLine.__table__.insert(), [{"order_id": order.id, "refunded_quantity": 0,
                                                        "refunded_fen": 0, **ln} for ln in lines])
    aggregates.on_order(session, member_id=member_id, amount_fen=amount, paid_at=paid_at)
    if earn:
        earning.on_order(session, order, lines)
    _apply_pending(session, order)
    return order


def find_order(session: Session, *, source: str, external_id: str, lock: bool = False) -> Order | None:
    stmt = select(Order).where(Order.source == source, Order.external_id == external_id)
    return session.scalar(stmt.with_for_update() if lock else stmt)


def insert_refund(session: Session, *, data: RefundIn, body_hash: str) -> Refund:
    order_source = data.order_source or data.source
    refund = Refund(source=data.source, external_id=data.external_id, body_hash=body_hash,
                    order_source=order_source, order_external_id=data.order_external_id, status="pending",
                    request=data.model_dump(mode="json", include={"amount_fen", "lines"}, exclude_none=True),
                    reason=data.reason, refunded_at=as_utc(data.refunded_at))
    session.add(refund)
    session.flush()
    order = find_order(session, source=order_source, external_id=data.order_external_id, lock=True)
    if order is not None:
        _apply(session, refund, order)  # raises InvalidInput: the caller's savepoint drops the refund too
    return refund


def _apply_pending(session: Session, order: Order) -> None:
    pending = session.scalars(select(Refund).where(
        Refund.order_source == order.source, Refund.order_external_id == order.external_id,
        Refund.status == "pending").order_by(Refund.refunded_at, Refund.id)).all()
    for refund in pending:
        try:
            with session.begin_nested():
                _apply(session, refund, order)
        except InvalidInput as exc:
            refund.status, refund.error, refund.order_id = "rejected", exc.detail, order.id
            refund.member_id = order.member_id
            session.flush()


def _apply(session: Session, refund: Refund, order: Order) -> None:
    req = refund.request or {}
    remaining = order.amount_fen - order.refunded_fen
    line_rows: list[tuple[OrderLine, int, int]] = []
    if "lines" in req:
        lines = {ln.line_no: ln for ln in session.scalars(
            select(OrderLine).where(OrderLine.order_id == order.id).with_for_update())}
        by_sku: dict[str, list[OrderLine]] = {}
        for ln in lines.values():
            by_sku.setdefault(ln.sku, []).append(ln)
        for i, raw in enumerate(req["lines"]):
            ln, qty, amt = _line_refund(RefundLineIn.model_validate(raw), lines, by_sku, f"lines[{i}]")
            ln.refunded_quantity += qty  # at once, so a line named twice cannot be refunded twice
            ln.refunded_fen += amt
            line_rows.append((ln, qty, amt))
        amount = sum(a for _, _, a in line_rows)
    elif "amount_fen" in req:
        amount = req["amount_fen"]
    else:
        amount = remaining
        if amount == 0:
            raise InvalidInput.field("order_external_id", "the order is already fully refunded")
        for ln in session.scalars(select(OrderLine).where(OrderLine.order_id == order.id).with_for_update()):
            if ln.quantity > ln.refunded_quantity:
                qty, amt = ln.quantity - ln.refunded_quantity, ln.amount_fen - ln.refunded_fen
                ln.refunded_quantity, ln.refunded_fen = ln.quantity, ln.amount_fen
                line_rows.append((ln, qty, amt))
    if amount > remaining:
        raise InvalidInput.field("amount_fen", f"refund of {amount} fen exceeds the {remaining} fen not yet refunded")
    for ln, qty, amt in line_rows:
        session.add(RefundLine(refund_id=refund.id, order_line_id=ln.id, quantity=qty, amount_fen=amt))
    new_refunded = order.refunded_fen + amount
    session.execute(update(Order).where(Order.id == order.id).values(
        refunded_fen=new_refunded,
        status="refunded" if new_refunded >= order.amount_fen else "partially_refunded"))
    order.refunded_fen = new_refunded
    refund.status, refund.order_id, refund.member_id = "applied", order.id, order.member_id
    refund.amount_fen, refund.applied_at = amount, utcnow()
    session.flush()
    session.expire(order, ["status"])
    aggregates.recompute(session, member_id=order.member_id)
    earning.on_refund(session, refund, order)


def _line_refund(item: RefundLineIn, lines: dict[int, OrderLine], by_sku: dict[str, list[OrderLine]],
                 field: str) -> tuple[OrderLine, int, int]:
    if item.line_no is not None:
        line = lines.get(item.line_no)
        if line is None:
            raise InvalidInput.field(f"{field}.line_no", f"the order has no line {item.line_no}")
    else:
        found = [ln for ln in by_sku.get(item.sku, []) if ln.quantity > ln.refunded_quantity]
        if not found:
            raise InvalidInput.field(f"{field}.sku", f"no refundable line with sku {item.sku!r}")
        line = found[0]
    open_qty = line.quantity - line.refunded_quantity
    if open_qty == 0:
        raise InvalidInput.field(f"{field}", f"line {line.line_no} is already fully refunded")
    qty = item.quantity if item.quantity is not None else open_qty
    if qty > open_qty:
        raise InvalidInput.field(f"{field}.quantity", f"only {open_qty} unit(s) of line {line.line_no} are refundable")
    open_amount = line.amount_fen - line.refunded_fen
    if item.amount_fen is not None:
        amount = item.amount_fen
    elif qty == open_qty:
        amount = open_amount
    else:
        amount = line.amount_fen * qty // line.quantity
    if amount > open_amount:
        raise InvalidInput.field(f"{field}.amount_fen", f"exceeds the {open_amount} fen refundable on the line")
    return line, qty, amount
