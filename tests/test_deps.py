"""The request transaction commits before the response is sent: a failed commit is an error
response, never a success whose write was lost."""

from sqlalchemy.orm import Session

from tests.factories import headers, token_for


def test_a_failed_commit_is_not_reported_as_success(client, monkeypatch):
    ops = token_for(client, "hq_ops")

    def failing_commit(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Session, "commit", failing_commit)
    r = client.post("/api/v1/members", json={"name": "甲"}, headers=headers(ops))
    monkeypatch.undo()
    assert r.status_code == 500
    assert client.get("/api/v1/members", headers=headers(ops)).json()["items"] == []
