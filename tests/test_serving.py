"""The served process (the README's gunicorn command) against hostile clients."""

import json
import threading
import time

import psutil

MEASURE = {"measureName": "m", "value": 1, "startDate": "2024-01-01", "createdBy": "app", "group1": {"g1": "a"}}


def _head(served, path, extra=b""):
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {served.secret}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
    ).encode() + extra + b"\r\n"


def _answer(raw: bytes):
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return status, json.loads(body)


def _chunked(data: bytes, size=4096) -> bytes:
    out = b""
    for i in range(0, len(data), size):
        part = data[i : i + size]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out + b"0\r\n\r\n"


def test_a_chunked_body_with_a_malformed_chunk_size_is_400_json(served):
    raw = served.raw(_head(served, "/measure") + b"zz\r\n{}\r\n0\r\n\r\n")
    status, body = _answer(raw)
    assert status == 400
    assert body["error"].startswith("body: malformed chunked encoding")


def test_a_chunked_body_over_the_limit_is_413_saying_it(served):
    big = json.dumps({**MEASURE, "padding": "x" * 70_000}).encode()
    status, body = _answer(served.raw(_head(served, "/measure") + _chunked(big)))
    assert (status, body) == (413, {"error": "body: larger than the limit of 65536 bytes (64 KiB)"})
    # Under the limit, the same encoding is stored.
    status, body = _answer(served.raw(_head(served, "/measure") + _chunked(json.dumps(MEASURE).encode(), 10)))
    assert (status, body) == (201, {"ok": True})


def _workers_rss(served) -> int:
    return sum(child.memory_info().rss for child in psutil.Process(served.process.pid).children())


def test_eight_concurrent_16_mib_bulk_bodies_keep_worker_memory_bounded(served):
    served.request("POST", "/measures", [MEASURE] * 10)  # warm both workers a little
    before = _workers_rss(served)
    body = b"[" + b",".join([b"{}"] * (16 * 1024 * 1024 // 3 - 1)) + b"]"  # 16 MiB of empty objects
    assert len(body) < 16 * 1024 * 1024
    answers = []

    def send():
        answers.append(served.request("POST", "/measures", body, headers={"Content-Type": "application/json"},
                                      timeout=60)[::2])

    threads = [threading.Thread(target=send) for _ in range(8)]
    peak = before
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, _workers_rss(served))
        time.sleep(0.05)
    assert len(answers) == 8
    for status, data in answers:
        assert status == 400 and data["error"].startswith("body: more structure than 10000 measures")
    # The bodies themselves (8 x 16 MiB as bytes and text) are the floor; parsed, they
    # took 1.8 GiB before.
    assert peak - before < 400 * 1024 * 1024, (before, peak)
