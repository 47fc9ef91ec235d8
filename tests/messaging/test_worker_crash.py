"""A worker killed mid-batch (SIGKILL) through the real Aliyun adapter, on SQLite and PostgreSQL: nothing is lost,
and the provider sees a message twice only if it belonged to the batch the dead worker had sent but not yet recorded
— with the same OutId both times, the key Aliyun dedupes on.

The first worker is a separate process (the dispatch loop `orchard worker` runs, without the other periodic jobs)
sending to a loopback Dysms that checks the POP v1 signature and records the OutId of every request it accepts. The
server stalls on its 10th accepted request; the test kills the worker there, then a second worker (this process)
drains the outbox once the dead worker's claims lapse (ORCHARD_OUTBOX_CLAIM_SECONDS=1 instead of 5 minutes).

SQLite runs it too: the kill lands while the worker waits on the provider, outside any transaction, and a process
that dies inside one leaves a WAL that the next connection rolls back, so file locking does not get in the way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

from sqlalchemy import func, select

from orchard import db
from orchard.config import get_settings
from orchard.identity.models import Identity
from orchard.messaging import outbox, sending, templates
from orchard.messaging.models import Message
from tests.channels.loopback import Loopback
from tests.channels.test_aliyun import KEY_ID, SECRET, FakeDysms
from tests.segments.helpers import member

MESSAGES = 30
STALL_AT = 10
BATCH = 8  # the kill lands in the second batch: 8 sent and recorded, 8 sent unrecorded, 14 never claimed

#: The worker process: the outbox half of `orchard worker`, in a loop until nothing is left to send.
WORKER = """
import sys, time
from sqlalchemy import func, select
from orchard import db
from orchard.messaging import outbox, sending
from orchard.messaging.models import Message

providers = sending.providers()
sys.stdin.readline()  # imported and configured: start when the test has queued the messages
while True:
    outbox.dispatch(providers, to_outbound=sending.to_outbound, limit=int(sys.argv[1]))
    with db.transaction(readonly=True) as s:
        if not s.scalar(select(func.count()).select_from(Message).where(Message.status.in_(("queued", "sending")))):
            break
    time.sleep(0.05)
"""


class StallingDysms(FakeDysms):
    """The fake Dysms of the Aliyun adapter tests; its STALL_AT-th accepted request never gets an answer."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.stalled_out_id: str | None = None

    def __call__(self, req):
        reply = super().__call__(req)
        if len(self.sent) == STALL_AT and not self.stalled.is_set():
            self.stalled_out_id = self.sent[-1]["OutId"]
            self.stalled.set()
            self.release.wait(30)  # accepted at Aliyun; the answer never reaches the dead worker
        return reply

    def out_ids(self) -> list[str]:
        return [q["OutId"] for q in self.sent]


def _left() -> int:
    with db.transaction(readonly=True) as s:
        return s.scalar(select(func.count()).select_from(Message).where(Message.status.in_(("queued", "sending"))))


def test_a_worker_killed_mid_batch_loses_nothing_and_repeats_only_its_unrecorded_batch(clean_db, monkeypatch,
                                                                                        tmp_path):
    dysms = StallingDysms()
    with Loopback(dysms) as lb:
        env = {"ORCHARD_SMS_ALIYUN_ACCESS_KEY_ID": KEY_ID, "ORCHARD_SMS_ALIYUN_ACCESS_KEY_SECRET": SECRET,
               "ORCHARD_SMS_ALIYUN_ENDPOINT": lb.url, "ORCHARD_CHANNELS": "sms=aliyun",
               "ORCHARD_OUTBOX_CLAIM_SECONDS": "1"}
        log = (tmp_path / "worker.log").open("wb")
        # Started first, so that its imports overlap with queueing the messages; it begins on "go".
        worker = subprocess.Popen([sys.executable, "-c", WORKER, str(BATCH)], env={**os.environ, **env},
                                  stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
        try:
            with db.transaction() as s:
                templates.create(s, code="shipped", name="发货通知", channel="sms", purpose="service",
                                 sign_name="果园会员", provider_template="SMS_NOVAR", body="您的订单已发货。",
                                 actor="t", publish=True)
                for i in range(MESSAGES):
                    mid = member(s, f"m{i}")
                    s.add(Identity(member_id=mid, kind="phone", value=f"+86138000{i:05d}"))
                    s.flush()
                    outbox.enqueue(s, key=f"shipped-{i}", member_id=mid, template_code="shipped")
            worker.stdin.write(b"go\n")
            worker.stdin.close()
            stalled = dysms.stalled.wait(60)
            os.kill(worker.pid, signal.SIGKILL)
            assert worker.wait(10) == -signal.SIGKILL
        finally:
            if worker.poll() is None:
                worker.kill()
            dysms.release.set()
            log.close()
        assert stalled, (tmp_path / "worker.log").read_text()
        with db.transaction(readonly=True) as s:
            ids = list(s.scalars(select(Message.id)))
            left_behind = Counter(s.scalars(select(Message.status)))
            unrecorded = {f"orchard-{i}" for i in s.scalars(select(Message.id).where(Message.status == "sending"))}
        # Batch 1 (1–8) sent and recorded; batch 2 (9–16) sent concurrently, the 10th request stalled, the
        # batch not recorded when the worker died; 17–30 never claimed.
        assert len(ids) == MESSAGES and left_behind == {"sent": BATCH, "sending": BATCH, "queued": 14}

        # The second worker: the same loop, here, with the same settings.
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()
        try:
            providers = sending.providers()
            for _ in range(200):
                outbox.dispatch(providers, to_outbound=sending.to_outbound, limit=BATCH)
                if not _left():
                    break
                time.sleep(0.05)  # until the dead worker's claims lapse (a second)
        finally:
            monkeypatch.undo()
            get_settings.cache_clear()

    with db.transaction(readonly=True) as s:
        assert Counter(s.scalars(select(Message.status))) == {"sent": MESSAGES}
    seen = Counter(dysms.out_ids())
    assert set(seen) == {f"orchard-{i}" for i in ids}  # every message reached the provider, under its own id
    repeated = {out_id for out_id, n in seen.items() if n > 1}
    # Only messages of the batch the dead worker had not recorded come again, each once more, under its own
    # OutId (the key Aliyun dedupes on); the stalled one among them.
    assert repeated <= unrecorded and all(seen[out_id] == 2 for out_id in repeated)
    assert dysms.stalled_out_id in repeated
