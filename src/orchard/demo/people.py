"""People of the demo: zh-CN names weighted like the population, birthdays, mobile numbers and
WeChat ids. Pure functions of a `random.Random`; nothing here touches a database."""

from __future__ import annotations

import datetime as dt
import random
import string
from itertools import accumulate

#: The 100 commonest surnames with their share of the population in ‱ (公安部 2020 ranking, rounded),
#: and two compound ones.
SURNAMES = (
    ("王", 710), ("李", 700), ("张", 670), ("刘", 540), ("陈", 460), ("杨", 310), ("黄", 220), ("赵", 220),
    ("吴", 200), ("周", 190), ("徐", 150), ("孙", 150), ("马", 130), ("朱", 130), ("胡", 120), ("郭", 120),
    ("何", 110), ("林", 110), ("高", 110), ("罗", 100), ("郑", 90), ("梁", 90), ("谢", 80), ("宋", 80),
    ("唐", 70), ("许", 70), ("韩", 70), ("冯", 70), ("邓", 70), ("曹", 60), ("彭", 60), ("曾", 60), ("肖", 60),
    ("田", 50), ("董", 50), ("袁", 50), ("潘", 50), ("于", 50), ("蒋", 50), ("蔡", 50), ("余", 50), ("杜", 50),
    ("叶", 40), ("程", 40), ("苏", 40), ("魏", 40), ("吕", 40), ("丁", 40), ("任", 40), ("沈", 40), ("姚", 40),
    ("卢", 40), ("姜", 40), ("崔", 40), ("钟", 40), ("谭", 30), ("陆", 30), ("汪", 30), ("范", 30), ("金", 30),
    ("石", 30), ("廖", 30), ("贾", 30), ("夏", 30), ("韦", 30), ("付", 30), ("方", 30), ("白", 30), ("邹", 30),
    ("孟", 30), ("熊", 30), ("秦", 30), ("邱", 30), ("江", 30), ("尹", 30), ("薛", 20), ("闫", 20), ("段", 20),
    ("雷", 20), ("侯", 20), ("龙", 20), ("史", 20), ("陶", 20), ("黎", 20), ("贺", 20), ("顾", 20), ("毛", 20),
    ("郝", 20), ("龚", 20), ("邵", 20), ("万", 20), ("钱", 20), ("严", 20), ("覃", 20), ("武", 20), ("戴", 20),
    ("莫", 20), ("孔", 20), ("欧阳", 3), ("司马", 1),
)
_SURNAME_CUM = tuple(accumulate(w for _, w in SURNAMES))

#: Given names by generation (born before 1975, 1975–1989, from 1990) and gender: whole names
#: popular in each era, and characters combined into two-character names for variety.
GIVEN = {
    ("old", "male"): tuple("建国 建华 国强 志强 建军 德明 卫东 国庆 永刚 海涛 伟 军 勇 平".split()),
    ("old", "female"): tuple("秀英 桂英 秀兰 玉兰 桂兰 凤英 淑珍 丽华 红梅 玉梅 芳 霞 红 萍".split()),
    ("mid", "male"): tuple("伟 磊 强 军 洋 勇 杰 涛 明 超 刚 鹏 辉 斌 海波 志伟".split()),
    ("mid", "female"): tuple("静 丽 敏 艳 娟 燕 丹 玲 婷 颖 晓燕 丽娟 雪梅 海燕".split()),
    ("new", "male"): tuple("子轩 浩然 宇轩 俊杰 浩宇 梓豪 一鸣 博文 皓轩 宇航 晨 昊 航 睿".split()),
    ("new", "female"): tuple("欣怡 梓涵 诗涵 雨萱 子涵 一诺 思琪 佳怡 可欣 雨桐 悦 琪 彤 萱".split()),
}
CHARS = {"male": "伟强磊军洋勇杰涛明超刚鹏辉斌宇浩凯健俊帆旭宁龙林阳建国志文博晨峰毅鑫",
         "female": "芳娜敏静丽艳娟霞婷雪琳晶颖倩佳慧丹萍红燕玲梅莉欣怡涵琪悦彤瑶薇菲"}

#: Mobile prefixes with a rough market weight; every number under them is valid for `phonenumbers`.
PHONE_PREFIXES = (
    ("138", 8), ("139", 8), ("135", 6), ("136", 6), ("137", 6), ("134", 3), ("150", 5), ("151", 5), ("152", 4),
    ("157", 3), ("158", 5), ("159", 5), ("182", 4), ("183", 3), ("187", 4), ("188", 4), ("130", 4), ("131", 4),
    ("132", 3), ("155", 3), ("156", 3), ("185", 3), ("186", 4), ("166", 2), ("133", 3), ("153", 2), ("180", 3),
    ("181", 3), ("189", 4), ("177", 2), ("173", 2), ("199", 2), ("191", 1), ("198", 1),
)
_PREFIX_CUM = tuple(accumulate(w for _, w in PHONE_PREFIXES))
_SUFFIXES = 10**8
_UNIONID_CHARS = string.ascii_letters + string.digits + "-_"


def surname(rng: random.Random) -> str:
    return rng.choices(SURNAMES, cum_weights=_SURNAME_CUM)[0][0]


def full_name(rng: random.Random, gender: str, born: dt.date) -> str:
    """Surname + a given name typical of the generation; unknown gender draws from either pool."""
    sex = gender if gender in ("male", "female") else rng.choice(("male", "female"))
    era = "old" if born.year < 1975 else "mid" if born.year < 1990 else "new"
    if rng.random() < 0.6:
        given = rng.choice(GIVEN[(era, sex)])
    else:
        given = rng.choice(CHARS[sex]) + rng.choice(CHARS[sex]) if rng.random() < 0.75 else rng.choice(CHARS[sex])
    return surname(rng) + given


def birthday(rng: random.Random, today: dt.date) -> dt.date:
    """Age 18–65 on `today`, most members between 25 and 40."""
    age = rng.triangular(18, 65, 30)
    return today - dt.timedelta(days=int(age * 365.2425))


class PhoneBook:
    """Unique mobile numbers without remembering them: the eight digits after the prefix are an
    affine permutation of the member's index (a·i + b mod 10⁸ with a coprime to 10), so distinct
    indices never share digits whatever prefix they draw. Draws its parameters from `rng` once."""

    def __init__(self, rng: random.Random) -> None:
        self.a = rng.randrange(10**7, 10**8) | 1
        while self.a % 5 == 0:
            self.a += 2
        self.b = rng.randrange(_SUFFIXES)

    def number(self, rng: random.Random, index: int) -> str:
        if index >= _SUFFIXES:
            raise ValueError("more members than eight-digit suffixes")
        prefix = rng.choices(PHONE_PREFIXES, cum_weights=_PREFIX_CUM)[0][0]
        return f"{prefix}{(self.a * index + self.b) % _SUFFIXES:08d}"


def unionid(rng: random.Random) -> str:
    """Shaped like a WeChat unionid: 'o' and 27 URL-safe characters."""
    return "o" + "".join(rng.choices(_UNIONID_CHARS, k=27))


def spaced_e164(phone: str) -> str:
    """'13812345678' → '+86 138 1234 5678', the same number as a differently formatted cell."""
    return f"+86 {phone[:3]} {phone[3:7]} {phone[7:]}"
