"""Language choice for what users read: zh-CN by default, English when the request's
Accept-Language prefers it (or ORCHARD_LANGUAGE says so)."""

from __future__ import annotations

from orchard.config import get_settings

#: Problem titles are written in Chinese at their source; these are their English forms.
TITLES_EN = {
    "请求无效": "Bad request", "输入无效": "Invalid input", "未找到": "Not found", "冲突": "Conflict",
    "未认证": "Not authenticated", "无权限": "Forbidden", "内部错误": "Internal error",
    "请求体过大": "Payload too large", "不支持的内容编码": "Unsupported content encoding",
    "请求体无法解析": "Malformed request body", "请求过于频繁": "Too many requests",
    "不支持的媒体类型": "Unsupported media type",
}


def wants_english(accept_language: str | None) -> bool:
    """True when English ranks above Chinese in Accept-Language (q-values respected)."""
    if not accept_language:
        return get_settings().language.lower().startswith("en")
    best: dict[str, float] = {}
    for part in accept_language.split(","):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        lang = tag.strip().lower()[:2]
        if lang in ("en", "zh"):
            best[lang] = max(best.get(lang, 0.0), q)
    return best.get("en", 0.0) > best.get("zh", 0.0)


def title(zh: str, accept_language: str | None) -> str:
    return TITLES_EN.get(zh, zh) if wants_english(accept_language) else zh
