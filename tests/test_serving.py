"""The served process (the README's gunicorn command) against hostile clients."""

import json
import selectors
import threading
import time

import psutil

MEASURE = {
    "measureName": "m",
    "value": 1,
    "startDate": "2024-01-01",
    "createdBy": "app",
    "group1": {"g1": "a"},
}


def _head(served, path, extra=b""):
    return (
        (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {served.secret}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
        ).encode()
        + extra
        + b"\r\n"
    )


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
        answers.append(
            served.request(
                "POST", "/measures", body, headers={"Content-Type": "application/json"}, timeout=60
            )[::2]
        )

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


def _open_idle(address, port, count):
    import socket

    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(address, 0))
        sockets.append(sock)
    return sockets


def _read_until_closed(sock, timeout=10) -> bytes:
    """What `sock` receives until the server closes it (or `timeout` s pass)."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        pass
    return b"".join(chunks)


def _drip(address, port, data: bytes, stop: threading.Event):
    """A client sending `data` one byte every 0.5 s until stopped or cut off."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(address, 0)) as sock:
            for byte in data:
                if stop.is_set():
                    return
                sock.sendall(bytes([byte]))
                stop.wait(0.5)
    except OSError:
        pass  # cut off by the server's deadline: what it should do


def test_idle_and_slow_clients_do_not_starve_normal_requests(served):
    stop = threading.Event()
    idle = _open_idle("127.0.0.2", served.port, 150)
    head = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"
    body = (
        b"POST /measure HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
        + b" " * 500
    )
    drippers = [
        threading.Thread(target=_drip, args=(f"127.0.0.{3 + i % 4}", served.port, data, stop))
        for i, data in enumerate([head] * 12 + [body] * 12)
    ]
    for thread in drippers:
        thread.start()
    try:
        time.sleep(1)
        latencies = []
        for _ in range(20):
            started = time.monotonic()
            status, _, data = served.request("GET", "/status", token=False, timeout=5)
            latencies.append(time.monotonic() - started)
            assert status == 200 and data["global_status"] == "ok"
        status, _, _ = served.request("POST", "/measure", MEASURE, timeout=5)
        assert status == 201
        assert max(latencies) < 1.0, latencies
    finally:
        stop.set()
        for sock in idle:
            sock.close()
        for thread in drippers:
            thread.join(10)


def test_a_slow_head_is_cut_off_and_a_slow_body_gets_408(served):
    import socket

    with socket.create_connection(("127.0.0.1", served.port), timeout=20) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\n")
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed without an answer past --keep-alive (5 s)
        assert time.monotonic() - started < 8
    with socket.create_connection(("127.0.0.1", served.port), timeout=20) as sock:
        sock.sendall(
            b"POST /measure HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        answer = b""
        while chunk := sock.recv(1000):
            answer += chunk
        status, body = _answer(answer)
    assert (status, body) == (408, {"error": "body: not received within 10 s"})


def test_connections_past_the_cap_per_address_get_503_json(served):
    from dacc.serving import MAX_CONNECTIONS_PER_ADDRESS

    sockets = _open_idle("127.0.0.7", served.port, 2 * MAX_CONNECTIONS_PER_ADDRESS + 50)
    try:
        # The first connection answered (none are, but the refused ones): waited for, not
        # slept on, so that a slow server under load is not taken for one refusing none.
        with selectors.DefaultSelector() as selector:
            for sock in sockets:
                selector.register(sock, selectors.EVENT_READ)
            ready = selector.select(timeout=30)
        assert ready, "no connection was refused"
        status, body = _answer(_read_until_closed(ready[0][0].fileobj))
        assert (status, body) == (503, {"error": "too many connections from this address"})
        # Another address is served meanwhile.
        assert served.request("GET", "/status", token=False)[0] == 200
    finally:
        for sock in sockets:
            sock.close()


def test_the_server_s_own_refusals_are_json(served):
    status, body = _answer(served.raw(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == 414 and isinstance(body["error"], str)
    status, body = _answer(served.raw(b"GET /status HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"))
    assert status == 400 and isinstance(body["error"], str)


def test_the_readme_and_the_image_serve_with_the_measured_options():
    from pathlib import Path

    from dacc.serving import GUNICORN_OPTIONS, SERVE_OPTIONS

    root = Path(__file__).resolve().parent.parent
    assert (
        f"gunicorn -b 127.0.0.1:5000 {' '.join(GUNICORN_OPTIONS)} 'dacc:create_app()'"
        in (root / "README.md").read_text()
    )
    script = (root / "scripts" / "docker-web.sh").read_text().replace("\\\n    ", "")
    assert f"exec gunicorn {' '.join(SERVE_OPTIONS)} -w " in script
