"""A hypothesis state machine drives the real ledger with earns, spends, cancelled spends, reversals
that may run into debt, the passage of time and expiry passes (as they are and as they were before
migration 0017), against a plain Python model of lots and debt; after every step the balances match
the model and `verify` finds nothing."""

import datetime as dt
import itertools
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from orchard import db
from orchard.loyalty import ledger
from orchard.loyalty.expiry import expire_due
from orchard.loyalty.ledger import Insufficient
from orchard.loyalty.models import PointsEntry
from tests.loyalty.helpers import T0, expire_as_before_0017, member, post, summary, violations

DAY = dt.timedelta(days=1)
_reversals = itertools.count(1)


class Ledger(RuleBasedStateMachine):
    @initialize()
    def start(self):
        self.member = member()
        self.now = T0
        self.lots: list[dict] = []  # amount left, expires, pending until
        self.debt = 0
        self.spends: list[tuple[int, list[tuple[dict, int]]]] = []  # entry id, (lot, points) it took

    def _credit(self, lot: dict) -> None:
        """Like the ledger: a credit repays debt first."""
        repay = min(lot["left"], self.debt)
        lot["left"] -= repay
        self.debt -= repay

    def _unexpired(self) -> list[dict]:
        lots = [lot for lot in self.lots if lot["left"] and (lot["expires"] is None or lot["expires"] > self.now)]
        return sorted(lots, key=lambda lot: (lot["expires"] is None, lot["expires"] or T0))

    def _available(self) -> int:
        return sum(lot["left"] for lot in self.lots if (lot["expires"] is None or lot["expires"] > self.now)
                   and (lot["pending"] is None or lot["pending"] <= self.now))

    @rule(amount=st.integers(1, 500), expires_in=st.one_of(st.none(), st.integers(1, 60)),
          pending_for=st.one_of(st.none(), st.integers(1, 10)))
    def earn(self, amount, expires_in, pending_for):
        expires = self.now + expires_in * DAY if expires_in else None
        pending = self.now + pending_for * DAY if pending_for else None
        post(self.member, amount, now=self.now, expires_at=expires, pending_until=pending)
        self.lots.append({"left": amount, "expires": expires, "pending": pending})
        self._credit(self.lots[-1])

    @rule(amount=st.integers(1, 800))
    def spend(self, amount):
        available = self._available()
        try:
            entry_id, *_ = post(self.member, -amount, now=self.now)
        except Insufficient:
            assert amount > available
            return
        assert amount <= available
        usable = [lot for lot in self._unexpired() if lot["pending"] is None or lot["pending"] <= self.now]
        took = []
        for lot in usable:  # soonest-expiring first, as the ledger does
            take = min(lot["left"], amount)
            if take:
                lot["left"] -= take
                took.append((lot, take))
            amount -= take
        self.spends.append((entry_id, took))

    @rule(pick=st.integers(0, 100), reason=st.sampled_from(["订单取消", "cancelled"]))
    def cancel_spend(self, pick, reason):
        if not self.spends:
            return
        entry_id, took = self.spends.pop(pick % len(self.spends))
        with db.transaction() as s:
            entry, created = ledger.restore(s, spend=s.get(PointsEntry, entry_id), reason=reason, actor="test",
                                            now=self.now)
            again, created_again = ledger.restore(s, spend=s.get(PointsEntry, entry_id), reason="retry",
                                                  actor="test", now=self.now)
        assert created and not created_again and again.id == entry.id
        for lot, take in took:
            lot["left"] += take
        for lot, _ in took:
            self._credit(lot)

    @rule(amount=st.integers(1, 800))
    def reverse_into_debt(self, amount):
        """A refund's reversal under the debt policy: takes from every unexpired lot, pending ones
        included, and owes the rest."""
        with db.transaction() as s:
            ledger.post(s, ledger.Command(member_id=self.member, amount=-amount, kind="reverse", reason="退款",
                                          source="test-reverse", external_id=str(next(_reversals)), actor="test",
                                          on_short="debt"), now=self.now)
        for lot in self._unexpired():
            take = min(lot["left"], amount)
            lot["left"] -= take
            amount -= take
        self.debt += amount

    @rule(days=st.integers(1, 30))
    def wait(self, days):
        self.now += days * DAY

    @rule(before_0017=st.booleans())
    def expire(self, before_0017):
        """The pass as it is (the expiry on the lots) or as it was before migration 0017 (allocation
        rows): a ledger holds both forms, and a lot may be expired once each way."""
        if before_0017:
            expire_as_before_0017(self.now)
        else:
            with db.transaction() as s:
                expire_due(s, now=self.now)
        for lot in self.lots:
            if lot["expires"] is not None and lot["expires"] <= self.now:
                lot["left"] = 0

    @invariant()
    def matches_the_model(self):
        if not hasattr(self, "member"):
            return
        s = summary(self.member, now=self.now)
        assert s.debt == self.debt
        assert s.balance == sum(lot["left"] for lot in self.lots) - self.debt
        assert s.available == self._available()
        assert s.pending == sum(lot["left"] for lot in self.lots if lot["pending"] and lot["pending"] > self.now
                                and (lot["expires"] is None or lot["expires"] > self.now))
        assert violations() == {}


def test_the_ledger_behaves_like_its_model(clean_db):
    run = Ledger.TestCase
    # ORCHARD_MODEL_EXAMPLES=300 for a longer hunt.
    run.settings = settings(max_examples=int(os.environ.get("ORCHARD_MODEL_EXAMPLES", 30)), stateful_step_count=15,
                            deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    run().runTest()
