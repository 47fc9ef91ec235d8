"""The Idempotency-Key fingerprint of a multipart body ignores its (random) boundary, however the
body is split into chunks on the wire; anything else in the body still changes it."""

import asyncio

from orchard.idempotency.middleware import _Body


def _form(boundary: bytes, file: bytes = b"a,b\r\n1,2\r\n") -> bytes:
    return (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"kind\"\r\n\r\nmembers\r\n--" + boundary
            + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.csv\"\r\n\r\n" + file + b"\r\n--"
            + boundary + b"--\r\n")


def _fingerprint(body: bytes, boundary: bytes | None, chunk: int) -> str:
    spool = _Body(b"POST /api/v1/imports?\n", boundary)

    async def feed() -> None:
        for i in range(0, len(body), chunk):
            await spool.add(body[i:i + chunk])

    asyncio.run(feed())
    try:
        return spool.fingerprint()
    finally:
        spool.close()


def test_the_boundary_does_not_count_whatever_the_chunking():
    one = _form(b"b0undary-aaaa")
    seen = {_fingerprint(one, b"b0undary-aaaa", n) for n in (1, 2, 3, 5, 7, 13, 64, len(one))}
    other = _form(b"zz-another-boundary-zz")
    seen |= {_fingerprint(other, b"zz-another-boundary-zz", n) for n in (1, 4, 9, len(other))}
    assert len(seen) == 1
    assert _fingerprint(_form(b"b0undary-aaaa", b"a,b\r\n1,3\r\n"), b"b0undary-aaaa", 5) not in seen


def test_without_a_boundary_the_fingerprint_is_the_plain_hash():
    import hashlib

    body = b'{"name": "\xe7\x94\xb2"}'
    assert _fingerprint(body, None, 3) == hashlib.sha256(b"POST /api/v1/imports?\n" + body).hexdigest()
