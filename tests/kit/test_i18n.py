import pytest

from orchard.kit.i18n import wants_english
from tests.factories import api_key, headers


@pytest.mark.parametrize(("header", "english"), [
    (None, False), ("zh-CN", False), ("en-US", True), ("en;q=0.5, zh-CN", False), ("zh;q=0.3, en;q=0.8", True),
    ("fr", False), ("en;q=abc", False),
])
def test_language_choice(header, english):
    assert wants_english(header) is english


def test_problem_titles_are_chinese_by_default_and_english_on_request(client):
    key = api_key()
    zh = client.get("/api/v1/members/999", headers=headers(key))
    en = client.get("/api/v1/members/999", headers=headers(key, **{"Accept-Language": "en"}))
    assert (zh.json()["title"], en.json()["title"]) == ("未找到", "Not found")
