"""Industry presets of the demo data set, as data: catalogue (category → SKUs with prices in fen),
sales channels, purchase rhythm, seasonality strength, opening hours and the behaviour events each
industry produces. `generate` reads these tables and nothing else industry-specific."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Industry(StrEnum):
    retail = "retail"
    ecommerce = "ecommerce"
    restaurant = "restaurant"
    gym = "gym"
    education = "education"
    hotel = "hotel"


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    category: str
    price_fen: int


@dataclass(frozen=True)
class FollowUp:
    """Events around an order that holds a line of `category` (None: any order): `count` events
    (inclusive range) spread over `days` (from, to) relative to the payment time."""

    event: str
    probability: float
    count: tuple[int, int]
    days: tuple[float, float]
    category: str | None = None


@dataclass(frozen=True)
class Preset:
    label: str
    catalog: tuple[tuple[str, float, tuple[tuple[str, str, int], ...]], ...]  # (category, weight, SKUs)
    channels: tuple[tuple[str, float, bool], ...]  # (channel, weight, sold in a store)
    sources: tuple[tuple[str, float], ...]  # how members were enrolled (source_channel)
    #: Orders per member per month for an average buyer; the gamma shape sets how unequal buyers are.
    monthly_rate: float
    #: Chance that a buyer never buys again after each order (BG/NBD "drop-out").
    churn: float
    basket: tuple[float, ...]  # weights of 1, 2, 3, 4 lines
    quantity: tuple[float, ...]  # weights of 1, 2, 3, 4 units per line
    hours: str  # key of HOURS
    weekend_lift: float
    promo_strength: float  # scales the 双11 / 618 peaks; 0 = none
    female_share: float
    unionid_share: float  # members with a WeChat unionid (mini-program / official account)
    in_store_share: float  # members enrolled in a store (the others have no home store)
    #: Behaviour events per member per month unrelated to an order, and their mix.
    browse_rate: float
    browse: tuple[tuple[str, float], ...]
    follow_ups: tuple[FollowUp, ...]
    refund_reasons: tuple[str, ...]

    def products(self) -> tuple[tuple[Product, ...], tuple[float, ...]]:
        """Every product with its draw weight: the category's share split so cheaper items sell more
        often (∝ 1/√price)."""
        items, weights = [], []
        for category, share, skus in self.catalog:
            inv = [1 / price**0.5 for _, _, price in skus]
            for (sku, name, price), w in zip(skus, inv, strict=True):
                items.append(Product(sku, name, category, price))
                weights.append(share * w / sum(inv))
        return tuple(items), tuple(weights)


#: Relative order volume per local hour 0–23.
HOURS = {
    "shop": (0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 4, 6, 7, 6, 7, 8, 8, 7, 8, 9, 9, 7, 3, 0),
    "online": (3, 2, 1, 1, 0, 0, 1, 2, 3, 4, 5, 5, 6, 5, 5, 5, 5, 5, 6, 7, 9, 10, 10, 6),
    "meals": (0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 3, 10, 14, 8, 2, 2, 3, 8, 12, 11, 6, 3, 1, 0),
    "gym": (0, 0, 0, 0, 0, 0, 4, 6, 5, 3, 3, 3, 4, 3, 2, 3, 4, 6, 9, 10, 9, 5, 2, 0),
    "school": (0, 0, 0, 0, 0, 0, 0, 0, 2, 5, 6, 5, 3, 3, 5, 6, 5, 4, 5, 7, 7, 4, 1, 0),
    "hotel": (1, 1, 0, 0, 0, 0, 1, 2, 3, 3, 3, 4, 5, 6, 8, 9, 9, 8, 7, 6, 5, 4, 3, 2),
}

_SHOP_REASONS = ("七天无理由退货", "尺码不合适", "质量问题", "商品与描述不符", "不想要了")

PRESETS: dict[Industry, Preset] = {
    Industry.retail: Preset(
        label="连锁零售 / retail chain",
        catalog=(
            ("服装", 0.55, (("RT-FZ-001", "纯棉圆领T恤", 9900), ("RT-FZ-002", "修身牛仔裤", 29900),
                            ("RT-FZ-003", "羊毛针织衫", 49900), ("RT-FZ-004", "轻薄羽绒服", 69900),
                            ("RT-FZ-005", "真丝衬衫", 39900), ("RT-FZ-006", "运动卫衣", 25900))),
            ("鞋", 0.25, (("RT-XX-001", "轻跑运动鞋", 39900), ("RT-XX-002", "真皮乐福鞋", 59900),
                          ("RT-XX-003", "帆布休闲鞋", 19900), ("RT-XX-004", "切尔西短靴", 79900))),
            ("配饰", 0.20, (("RT-PS-001", "帆布托特包", 15900), ("RT-PS-002", "真皮腰带", 19900),
                            ("RT-PS-003", "羊绒围巾", 29900), ("RT-PS-004", "棒球帽", 8900),
                            ("RT-PS-005", "精梳棉袜三双装", 4900))),
        ),
        channels=(("pos", 0.72, True), ("mini_program", 0.2, False), ("wecom", 0.08, True)),
        sources=(("store", 0.55), ("mini_program", 0.25), ("wechat_oa", 0.12), ("referral", 0.08)),
        monthly_rate=1.0, churn=0.25, basket=(0.6, 0.27, 0.1, 0.03), quantity=(0.85, 0.12, 0.03),
        hours="shop", weekend_lift=1.35, promo_strength=0.8, female_share=0.62, unionid_share=0.45,
        in_store_share=1.0, browse_rate=0.25,
        browse=(("product_viewed", 0.55), ("store_visit", 0.25), ("added_to_cart", 0.12), ("shared", 0.04),
                ("live_attended", 0.04)),
        follow_ups=(FollowUp("reviewed", 0.06, (1, 1), (1, 5)), FollowUp("shared", 0.03, (1, 1), (0, 2))),
        refund_reasons=_SHOP_REASONS,
    ),
    Industry.ecommerce: Preset(
        label="电商 / e-commerce",
        catalog=(
            ("数码", 0.3, (("EC-SM-001", "无线蓝牙耳机", 29900), ("EC-SM-002", "快充充电宝 10000mAh", 12900),
                           ("EC-SM-003", "机械键盘", 39900), ("EC-SM-004", "智能手环", 19900),
                           ("EC-SM-005", "Type-C 数据线", 3900))),
            ("美妆", 0.35, (("EC-MZ-001", "玻尿酸补水面膜 10片", 9900), ("EC-MZ-002", "氨基酸洁面乳", 6900),
                            ("EC-MZ-003", "清爽防晒霜 SPF50", 12900), ("EC-MZ-004", "雾面哑光口红", 18900),
                            ("EC-MZ-005", "修护精华液 30ml", 35900))),
            ("食品", 0.35, (("EC-SP-001", "每日坚果 30袋", 12900), ("EC-SP-002", "挂耳咖啡 50包", 8900),
                            ("EC-SP-003", "五常大米 5kg", 7900), ("EC-SP-004", "柳州螺蛳粉 5袋", 5900),
                            ("EC-SP-005", "风干牛肉干 500g", 8800))),
        ),
        channels=(("tmall", 0.4, False), ("jd", 0.2, False), ("douyin", 0.15, False), ("mini_program", 0.2, False),
                  ("app", 0.05, False)),
        sources=(("tmall", 0.35), ("jd", 0.15), ("douyin", 0.15), ("mini_program", 0.25), ("app", 0.1)),
        monthly_rate=0.6, churn=0.35, basket=(0.5, 0.3, 0.14, 0.06), quantity=(0.75, 0.17, 0.06, 0.02),
        hours="online", weekend_lift=1.1, promo_strength=1.6, female_share=0.6, unionid_share=0.6,
        in_store_share=0.15, browse_rate=0.5,
        browse=(("login", 0.35), ("product_viewed", 0.4), ("added_to_cart", 0.12), ("shared", 0.05),
                ("live_attended", 0.08)),
        follow_ups=(FollowUp("product_viewed", 0.7, (1, 3), (-2, 0)), FollowUp("added_to_cart", 0.7, (1, 1), (-1, 0)),
                    FollowUp("reviewed", 0.15, (1, 1), (3, 10))),
        refund_reasons=_SHOP_REASONS + ("物流太慢", "重复下单"),
    ),
    Industry.restaurant: Preset(
        label="餐饮 / restaurant",
        catalog=(
            ("套餐", 0.5, (("RS-TC-001", "招牌牛肉饭套餐", 3800), ("RS-TC-002", "双人精选套餐", 12800),
                           ("RS-TC-003", "商务午市套餐", 4500), ("RS-TC-004", "家庭四人餐", 26800),
                           ("RS-TC-005", "番茄肥牛面套餐", 3200))),
            ("饮品", 0.3, (("RS-YP-001", "杨枝甘露", 1800), ("RS-YP-002", "港式柠檬茶", 1200),
                           ("RS-YP-003", "现磨美式咖啡", 1600), ("RS-YP-004", "鲜榨橙汁", 1500))),
            ("甜点", 0.2, (("RS-TD-001", "芒果班戟", 2200), ("RS-TD-002", "双皮奶", 1600),
                           ("RS-TD-003", "提拉米苏", 2800))),
        ),
        channels=(("pos", 0.6, True), ("meituan", 0.25, True), ("mini_program", 0.15, True)),
        sources=(("store", 0.4), ("mini_program", 0.45), ("meituan", 0.15)),
        monthly_rate=2.5, churn=0.12, basket=(0.3, 0.35, 0.25, 0.1), quantity=(0.8, 0.15, 0.05),
        hours="meals", weekend_lift=1.45, promo_strength=0.3, female_share=0.52, unionid_share=0.7,
        in_store_share=1.0, browse_rate=0.2,
        browse=(("store_visit", 0.5), ("reviewed", 0.25), ("shared", 0.15), ("campaign_joined", 0.1)),
        follow_ups=(FollowUp("reviewed", 0.08, (1, 1), (0, 1)),),
        refund_reasons=("菜品质量问题", "出餐太慢", "点错了", "外卖洒漏"),
    ),
    Industry.gym: Preset(
        label="健身 / gym",
        catalog=(
            ("月卡", 0.5, (("GY-YK-001", "月卡", 29900), ("GY-YK-002", "季卡", 79900), ("GY-YK-003", "年卡", 269900),
                           ("GY-YK-004", "十次卡", 39900))),
            ("私教课", 0.25, (("GY-SJ-001", "私教体验课", 9900), ("GY-SJ-002", "私教课 10节", 380000),
                              ("GY-SJ-003", "私教课 单节", 40000), ("GY-SJ-004", "普拉提小团课 8节", 159900))),
            ("补剂", 0.25, (("GY-BJ-001", "乳清蛋白粉 2磅", 29900), ("GY-BJ-002", "蛋白棒 12支", 11900),
                            ("GY-BJ-003", "电解质饮料", 600), ("GY-BJ-004", "一水肌酸 300g", 15900))),
        ),
        channels=(("pos", 0.7, True), ("mini_program", 0.3, True)),
        sources=(("store", 0.6), ("mini_program", 0.3), ("referral", 0.1)),
        monthly_rate=0.5, churn=0.25, basket=(0.82, 0.14, 0.04), quantity=(0.9, 0.08, 0.02),
        hours="gym", weekend_lift=1.2, promo_strength=0.4, female_share=0.45, unionid_share=0.55,
        in_store_share=1.0, browse_rate=0.3,
        browse=(("checked_in", 0.8), ("store_visit", 0.1), ("service_contacted", 0.1)),
        follow_ups=(FollowUp("checked_in", 0.9, (2, 8), (0, 30), "月卡"),
                    FollowUp("checked_in", 0.9, (1, 6), (0, 45), "私教课")),
        refund_reasons=("课程未使用", "搬家转店", "身体原因", "不想要了"),
    ),
    Industry.education: Preset(
        label="教育培训 / education",
        catalog=(
            ("课程", 0.65, (("ED-KC-001", "少儿英语 春季班 48课时", 588000), ("ED-KC-002", "少儿编程 入门班", 398000),
                            ("ED-KC-003", "美术素描 24课时", 288000), ("ED-KC-004", "钢琴一对一 10课时", 350000),
                            ("ED-KC-005", "试听课", 990))),
            ("教材", 0.35, (("ED-JC-001", "英语绘本套装", 19800), ("ED-JC-002", "编程配套教材", 8800),
                            ("ED-JC-003", "美术材料包", 15800))),
        ),
        channels=(("pos", 0.55, True), ("mini_program", 0.45, True)),
        sources=(("store", 0.45), ("mini_program", 0.35), ("referral", 0.2)),
        monthly_rate=0.18, churn=0.3, basket=(0.7, 0.25, 0.05), quantity=(0.95, 0.05),
        hours="school", weekend_lift=1.8, promo_strength=0.5, female_share=0.58, unionid_share=0.65,
        in_store_share=1.0, browse_rate=0.25,
        browse=(("login", 0.6), ("service_contacted", 0.2), ("campaign_joined", 0.2)),
        follow_ups=(FollowUp("class_attended", 0.95, (3, 10), (2, 90), "课程"),),
        refund_reasons=("课程时间冲突", "孩子不喜欢", "搬家转校区", "试听后不满意"),
    ),
    Industry.hotel: Preset(
        label="酒店 / hotel",
        catalog=(
            ("房费", 0.7, (("HT-FF-001", "高级大床房", 59800), ("HT-FF-002", "豪华双床房", 69800),
                           ("HT-FF-003", "行政套房", 168800), ("HT-FF-004", "商务大床房", 45800))),
            ("餐饮", 0.3, (("HT-CY-001", "自助早餐", 12800), ("HT-CY-002", "行政酒廊下午茶", 19800),
                           ("HT-CY-003", "中餐厅晚宴", 58800), ("HT-CY-004", "客房送餐", 8800))),
        ),
        channels=(("front_desk", 0.45, True), ("mini_program", 0.25, True), ("ctrip", 0.2, True),
                  ("fliggy", 0.1, True)),
        sources=(("front_desk", 0.4), ("mini_program", 0.3), ("ctrip", 0.2), ("referral", 0.1)),
        monthly_rate=0.15, churn=0.35, basket=(0.55, 0.35, 0.1), quantity=(0.5, 0.3, 0.15, 0.05),
        hours="hotel", weekend_lift=1.5, promo_strength=0.3, female_share=0.45, unionid_share=0.5,
        in_store_share=1.0, browse_rate=0.2,
        browse=(("login", 0.5), ("product_viewed", 0.35), ("service_contacted", 0.15)),
        follow_ups=(FollowUp("hotel_stay", 1.0, (1, 1), (0, 0), "房费"),
                    FollowUp("reviewed", 0.2, (1, 1), (1, 4), "房费")),
        refund_reasons=("行程取消", "重复预订", "房型不符", "服务投诉"),
    ),
}
