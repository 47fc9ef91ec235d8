"""What both SMS adapters share: the template registration check and the inbound-reply (上行) opt-out parser.

Chinese carriers and both vendors refuse marketing (推广) SMS without the 【signature】 and a way to refuse further
texts (MIIT Order 31: "提供便捷和有效的拒绝接收方式并随短信息告知用户"); Aliyun's template rules ask for
"拒收请回复R" at the end of a 推广 template. Orchard refuses such templates when they are registered, before any
vendor review, with a reason an operator can act on.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import phonenumbers

from .base import CallbackRejected, Purpose, utcnow

#: Replies that withdraw SMS marketing consent: T, TD, R, N, 退订, 取消 (after NFKC, trimming, upper-casing).
OPT_OUT_REPLIES = frozenset({"T", "TD", "R", "N", "退订", "取消"})

# Opt-out lines seen in approved templates: 拒收请回复R, 回T退订, 退订回T, 回复T退订, 回TD退订, 退订请回复T, 回N退订.
_OPT_OUT_LINE = re.compile(
    r"拒收请回复\s*R"
    r"|回复?\s*(?:T|TD|N|R)\s*(?:退订|拒收)"
    r"|退订\s*(?:请)?回复?\s*(?:T|TD|N|R)(?![A-Z])",
    re.IGNORECASE,
)
_SIGNATURE = re.compile(r"【([^【】]+)】")
_ALIYUN_VAR = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
_TENCENT_VAR = re.compile(r"\{(\d+)\}")
_TRIM = " \t\r\n\u3000.,!?;:。，！？；：、~…\"'“”‘’()（）"


def _normalize(text: str) -> str:
    """Full-width → half-width (ＴＤ → TD), ideographic spaces included."""
    return unicodedata.normalize("NFKC", text)


def is_opt_out_reply(text: str) -> bool:
    """True when an inbound SMS reply asks to stop marketing texts: T, TD, R, N, 退订, 取消 in any case or width,
    with surrounding spaces and punctuation ignored. Anything longer ("Thanks", "TD我不要了") is not an opt-out."""
    return _normalize(text).strip(_TRIM).upper() in OPT_OUT_REPLIES


@dataclass(frozen=True)
class TemplateCheck:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    signature: str | None = None
    variables: list[str] = field(default_factory=list)


def template_variables(content: str) -> list[str]:
    """Placeholders of a template in order of first appearance: Aliyun `${name}`, Tencent `{1}`."""
    seen: list[str] = []
    for m in re.finditer(r"\$\{([A-Za-z0-9_]+)\}|(?<!\$)\{(\d+)\}", content):
        name = m.group(1) or m.group(2)
        if name not in seen:
            seen.append(name)
    return seen


def check_sms_template(content: str, purpose: Purpose | str, *, sign_name: str | None = None) -> TemplateCheck:
    """The registration check for an SMS template (both vendors). A marketing template must carry the 【signature】
    and an opt-out line; any template must have content, a well-formed signature if it has one, and no two
    variables side by side (Tencent refuses adjacent variables)."""
    purpose = Purpose(purpose)
    text = _normalize(content).strip()
    reasons: list[str] = []
    if not text:
        return TemplateCheck(False, ["模板内容为空 (template is empty)"])
    sigs = _SIGNATURE.findall(text)
    signature = sigs[0].strip() if sigs else None
    if len(sigs) > 1:
        reasons.append("模板只能有一个【签名】 (more than one 【signature】)")
    if sign_name is not None and signature is not None and signature != _normalize(sign_name).strip():
        reasons.append(f"签名【{signature}】与发送签名【{sign_name}】不一致 (signature does not match the sign name)")
    if signature is not None and not 2 <= len(signature) <= 12:
        reasons.append("签名长度须为 2–12 个字 (signature must be 2-12 characters)")
    if re.search(r"(\$\{[A-Za-z0-9_]+\}|(?<!\$)\{\d+\})\s*(\$\{[A-Za-z0-9_]+\}|(?<!\$)\{\d+\})", text):
        reasons.append("变量不能相邻 (two variables side by side)")
    if purpose is Purpose.marketing:
        if signature is None:
            reasons.append("营销短信必须带【签名】 (a marketing text must carry the 【signature】)")
        if not _OPT_OUT_LINE.search(text):
            reasons.append("营销短信必须带退订方式，如「拒收请回复R」或「回T退订」 "
                           "(a marketing text must carry an opt-out line such as 拒收请回复R / 回T退订)")
    return TemplateCheck(not reasons, reasons, signature, template_variables(text))


def render_template(content: str, variables: dict[str, str]) -> str:
    """Fill `${name}` and `{1}` placeholders; a missing variable raises KeyError."""
    out = _ALIYUN_VAR.sub(lambda m: variables[m.group(1)], content)
    return _TENCENT_VAR.sub(lambda m: variables[m.group(1)], out)


def positional_params(variables: dict[str, str]) -> list[str]:
    """Tencent's TemplateParamSet from variables keyed "1".."n" (ValueError if the keys are not exactly that)."""
    if not variables:
        return []
    keys = sorted(variables, key=lambda k: int(k) if k.isdigit() else -1)
    if keys != [str(i) for i in range(1, len(keys) + 1)]:
        raise ValueError(f"positional template variables must be keyed 1..{len(keys)}, got {sorted(variables)}")
    return [variables[k] for k in keys]


def split_e164(phone: str) -> tuple[str, str]:
    """'+8613800000000' → ('86', '13800000000'). Accepts digits with a leading + only."""
    if not re.fullmatch(r"\+[1-9]\d{6,14}", phone):
        raise ValueError("recipient must be an E.164 phone number (+<country><number>)")
    num = phonenumbers.parse(phone, None)
    return str(num.country_code), str(num.national_number)


_SHANGHAI = ZoneInfo("Asia/Shanghai")


def json_list(body: bytes) -> list[dict]:
    """A vendor callback body: a JSON array of objects (a lone object is read as a one-item array)."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise CallbackRejected("callback body is not JSON") from exc
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise CallbackRejected("callback body is not a JSON array of objects")
    return data


def shanghai_time(value: str | None) -> datetime:
    """Vendors report local time (Asia/Shanghai) as 'YYYY-MM-DD HH:MM:SS'."""
    if not value:
        return utcnow()
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=_SHANGHAI)
    except ValueError as exc:
        raise CallbackRejected(f"bad time {value!r}") from exc
