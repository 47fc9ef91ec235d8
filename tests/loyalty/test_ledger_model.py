"""A hypothesis state machine drives the real ledger with earns, spends, the passage of time and
expiry passes, against a plain Python model of lots; after every step the balances match the
model and `verify` finds nothing."""

import datetime as dt

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from orchard import db
from orchard.loyalty.expiry import expire_due
from orchard.loyalty.ledger import Insufficient
from tests.loyalty.helpers import T0, member, post, summary, violations

DAY = dt.timedelta(days=1)


class Ledger(RuleBasedStateMachine):
    @initialize()
    def start(self):
        self.member = member()
        self.now = T0
        self.lots: list[dict] = []  # amount left, expires, pending until

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

    @rule(amount=st.integers(1, 800))
    def spend(self, amount):
        available = self._available()
        try:
            post(self.member, -amount, now=self.now)
        except Insufficient:
            assert amount > available
            return
        assert amount <= available
        usable = [lot for lot in self.lots if lot["left"] and (lot["expires"] is None or lot["expires"] > self.now)
                  and (lot["pending"] is None or lot["pending"] <= self.now)]
        usable.sort(key=lambda lot: (lot["expires"] is None, lot["expires"] or T0))
        for lot in usable:  # soonest-expiring first, as the ledger does
            take = min(lot["left"], amount)
            lot["left"] -= take
            amount -= take

    @rule(days=st.integers(1, 30))
    def wait(self, days):
        self.now += days * DAY

    @rule()
    def expire(self):
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
        assert s.balance == sum(lot["left"] for lot in self.lots)
        assert s.available == self._available()
        assert s.pending == sum(lot["left"] for lot in self.lots if lot["pending"] and lot["pending"] > self.now
                                and (lot["expires"] is None or lot["expires"] > self.now))
        assert violations() == {}


def test_the_ledger_behaves_like_its_model(clean_db):
    run = Ledger.TestCase
    run.settings = settings(max_examples=25, stateful_step_count=12, deadline=None,
                            suppress_health_check=[HealthCheck.function_scoped_fixture])
    run().runTest()
