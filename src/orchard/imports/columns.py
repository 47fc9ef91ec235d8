"""Documented column names per import kind. Headers are matched case-insensitively, ignoring
spaces, underscores and hyphens; Chinese headers from POS and Excel exports are accepted."""

from __future__ import annotations

import re

ORDER_COLUMNS: dict[str, tuple[str, ...]] = {
    "order_id": ("order_id", "order_no", "订单号", "订单编号", "单号"),
    "member_phone": ("member_phone", "phone", "mobile", "手机号", "手机", "会员手机号", "电话"),
    "member_external_id": ("member_external_id", "external_id", "user_id", "会员ID", "会员编号", "外部ID"),
    "member_card_no": ("member_card_no", "card_no", "会员卡号", "卡号"),
    "paid_at": ("paid_at", "paid_time", "order_time", "支付时间", "付款时间", "下单时间", "订单时间", "日期"),
    "amount": ("amount", "total", "金额", "实付金额", "订单金额", "支付金额", "实收金额"),
    "amount_fen": ("amount_fen", "金额分", "金额(分)"),
    "store_code": ("store_code", "store", "门店编码", "门店代码", "门店"),
    "channel": ("channel", "渠道", "销售渠道"),
    "sku": ("sku", "商品编码", "货号"),
    "product_name": ("product_name", "商品名称", "商品"),
    "category": ("category", "品类", "类目", "商品分类"),
    "quantity": ("quantity", "qty", "数量"),
    # One row per order line: the order's columns repeat on each row of the order (consecutive rows).
    "unit_price": ("unit_price", "price", "单价", "销售单价"),
    "unit_price_fen": ("unit_price_fen", "单价分", "单价(分)"),
    "line_amount": ("line_amount", "行金额", "商品金额", "小计"),
    "line_amount_fen": ("line_amount_fen", "行金额分", "行金额(分)"),
    "line_no": ("line_no", "行号", "明细行号"),
}

MEMBER_COLUMNS: dict[str, tuple[str, ...]] = {
    "phone": ("phone", "mobile", "member_phone", "手机号", "手机", "电话"),
    "external_id": ("external_id", "member_external_id", "user_id", "会员ID", "会员编号", "外部ID"),
    "card_no": ("card_no", "member_card_no", "会员卡号", "卡号"),
    "email": ("email", "邮箱", "电子邮箱"),
    "wechat_unionid": ("wechat_unionid", "unionid"),
    "wechat_openid": ("wechat_openid", "openid"),
    "name": ("name", "姓名", "会员姓名", "名字"),
    "gender": ("gender", "sex", "性别"),
    "birthday": ("birthday", "birth_date", "生日", "出生日期"),
    "region": ("region", "city", "地区", "城市", "所在地"),
    "store_code": ("store_code", "home_store", "门店编码", "归属门店", "门店"),
    "joined_at": ("joined_at", "join_date", "register_time", "注册时间", "入会时间", "开卡时间"),
    "source_channel": ("source_channel", "source", "来源渠道", "来源"),
    # Marketing consent per channel (是/否, yes/no, 1/0, 同意/拒绝); an empty cell changes nothing.
    "consent_sms": ("consent_sms", "sms_marketing", "sms_consent", "短信营销", "短信营销同意", "接收营销短信"),
    "consent_email": ("consent_email", "email_marketing", "email_consent", "邮件营销", "邮件营销同意"),
    "consent_wechat": ("consent_wechat", "wechat_marketing", "wechat_consent", "微信营销", "微信营销同意"),
    "consent_app_push": ("consent_app_push", "app_push_marketing", "push_consent", "推送营销", "APP推送营销同意"),
    "consent_wecom": ("consent_wecom", "wecom_marketing", "wecom_consent", "企微营销", "企业微信营销同意"),
}

REFUND_COLUMNS: dict[str, tuple[str, ...]] = {
    "refund_id": ("refund_id", "refund_no", "退款单号", "退款编号", "退款单编号"),
    # not the bare 单号 of orders: in a refund file it may be the refund's own number
    "order_id": ("order_id", "order_no", "订单号", "原订单号", "订单编号", "原订单编号"),
    "refunded_at": ("refunded_at", "refund_time", "退款时间", "退款日期", "日期"),
    "amount": ("amount", "refund_amount", "退款金额"),
    "amount_fen": ("amount_fen", "refund_amount_fen", "退款金额分", "退款金额(分)"),
    "sku": ORDER_COLUMNS["sku"],
    "quantity": ("quantity", "qty", "数量", "退款数量", "退货数量"),
    "reason": ("reason", "refund_reason", "退款原因", "原因"),
}

EVENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "event_id": ("event_id", "事件ID", "事件编号"),
    "name": ("name", "event", "event_name", "事件", "事件名称", "事件名"),
    "member_phone": ORDER_COLUMNS["member_phone"],
    "member_external_id": ORDER_COLUMNS["member_external_id"],
    "member_card_no": ORDER_COLUMNS["member_card_no"],
    "occurred_at": ("occurred_at", "event_time", "time", "timestamp", "发生时间", "事件时间", "时间"),
    "store_code": ORDER_COLUMNS["store_code"],
    "category": ORDER_COLUMNS["category"],
    "sku": ORDER_COLUMNS["sku"],
    "product_name": ORDER_COLUMNS["product_name"],
    "properties": ("properties", "props", "属性", "事件属性"),
}

TAG_COLUMNS: dict[str, tuple[str, ...]] = {
    "member_phone": ORDER_COLUMNS["member_phone"],
    "member_external_id": ORDER_COLUMNS["member_external_id"],
    "member_card_no": ORDER_COLUMNS["member_card_no"],
    # One or more tag names, separated by , ， ; ； | or 、
    "tags": ("tags", "tag", "tag_name", "tag_names", "标签", "会员标签", "标签名称", "标签名"),
}

KINDS = {"orders": ORDER_COLUMNS, "members": MEMBER_COLUMNS, "refunds": REFUND_COLUMNS, "events": EVENT_COLUMNS,
         "tags": TAG_COLUMNS}


def _key(header: str) -> str:
    return re.sub(r"[\s_\-（）()]", "", header).lower()


def map_headers(kind: str, headers: list[str]) -> tuple[dict[str, int], list[str]]:
    """(canonical column → index in the row, headers that matched nothing). First match wins."""
    lookup = {_key(alias): name for name, aliases in KINDS[kind].items() for alias in aliases}
    mapping: dict[str, int] = {}
    unknown = []
    for i, header in enumerate(headers):
        name = lookup.get(_key(header))
        if name is None:
            if header:
                unknown.append(header)
        elif name not in mapping:
            mapping[name] = i
    return mapping, unknown
