"""Coupons (SPEC B1, B2): templates (满减, percent off with a cap, no-threshold, gift, service voucher),
coupons issued one by one or in bulk in one SQL pass, the member's wallet, redemption exactly once
per coupon (conditional UPDATE), undo, void, the expiry pass and redemption rates per template and
campaign. Schedule `orchard coupons expire` daily next to `orchard points expire`."""
