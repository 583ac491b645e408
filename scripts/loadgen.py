"""Load generator of the benchmark: pre-built HTTP/1.1 requests over keep-alive
connections, driven by asyncio in one or more forked processes.

A request costs the generator one write and two reads on a raw stream (no HTTP
library), so that on a 2-core machine it stays far below the server it measures;
`generator_ceiling()` measures its own rate against a canned-reply server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import multiprocessing
import resource
import signal
import socket
import time
from array import array
from collections import Counter
from collections.abc import Sequence

HOST = "127.0.0.1"
_CTX = multiprocessing.get_context("fork")
_CANNED = b'HTTP/1.1 201 CREATED\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"ok": true}'


def build_request(method: str, path: str, *, body: bytes = b"", headers: dict | None = None) -> bytes:
    """The bytes of one keep-alive HTTP/1.1 request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", f"Content-Length: {len(body)}"]
    if body:
        lines.append("Content-Type: application/json")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclasses.dataclass
class LoadResult:
    requests: int
    elapsed: float
    latencies: array
    """Seconds per request, sorted."""
    statuses: Counter
    cpu_seconds: float
    """CPU time the generator's own processes used."""

    @classmethod
    def combine(cls, results: Sequence[LoadResult]) -> LoadResult:
        """One result for runs made one after the other (their times add up)."""
        statuses: Counter = Counter()
        for r in results:
            statuses.update(r.statuses)
        latencies = array("d", sorted(x for r in results for x in r.latencies))
        return cls(
            sum(r.requests for r in results),
            sum(r.elapsed for r in results),
            latencies,
            statuses,
            sum(r.cpu_seconds for r in results),
        )

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile of the latencies, in milliseconds."""
        if not self.latencies:
            return math.nan
        rank = max(1, math.ceil(p / 100 * len(self.latencies)))
        return self.latencies[rank - 1] * 1000

    @property
    def failures(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    @property
    def cpu_share(self) -> float:
        """Generator CPU per second of run, in cores: well under 1 means not the bottleneck."""
        return self.cpu_seconds / self.elapsed if self.elapsed else 0.0


def run_load(
    port: int,
    requests: Sequence[bytes],
    *,
    total: int | None = None,
    connections: int = 1,
    processes: int = 1,
    stop=None,
    started=None,
    timeout: float = 600.0,
) -> LoadResult:
    """Send `requests` (cycled) until `total` were answered or the event `stop` is set.

    Connections are spread over `processes` forked processes, which connect first and
    start together (then the event `started`, if given, is set). Bounded: a run stops
    after `timeout` seconds whatever the count.
    """
    if total is None and stop is None:
        raise ValueError("give total, stop, or both")
    processes = max(1, min(processes, connections))
    barrier = _CTX.Barrier(processes + 1)
    pipes, workers = [], []
    for n in range(processes):
        conns = connections // processes + (n < connections % processes)
        share = None if total is None else total // processes + (n < total % processes)
        parent_end, child_end = _CTX.Pipe(duplex=False)
        worker = _CTX.Process(
            target=_worker,
            args=(child_end, barrier, port, requests, n, share, conns, stop, timeout),
            daemon=True,
        )
        worker.start()
        child_end.close()
        pipes.append(parent_end)
        workers.append(worker)
    try:
        barrier.wait(timeout=30)
        if started is not None:
            started.set()
        reports = [pipe.recv() for pipe in pipes]
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
    errors = [r["error"] for r in reports if r.get("error")]
    if errors:
        raise RuntimeError(f"load generator failed: {errors[0]}")
    latencies = array("d")
    statuses: Counter = Counter()
    for report in reports:
        latencies.frombytes(report["latencies"])
        statuses.update(report["statuses"])
    latencies = array("d", sorted(latencies))
    elapsed = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    cpu = sum(r["cpu"] for r in reports)
    return LoadResult(len(latencies), elapsed, latencies, statuses, cpu)


def new_event():
    """An event the forked load processes can see (for `stop` and `started`)."""
    return _CTX.Event()


def generator_ceiling(
    requests: Sequence[bytes], *, total: int, connections: int, processes: int = 1, timeout: float = 600.0
) -> LoadResult:
    """The generator's own rate against a server that answers from a canned reply."""
    listener = socket.create_server((HOST, 0))
    server = _CTX.Process(target=_serve_canned, args=(listener,), daemon=True)
    server.start()
    try:
        port = listener.getsockname()[1]
        return run_load(
            port, requests, total=total, connections=connections, processes=processes, timeout=timeout
        )
    finally:
        server.terminate()
        server.join(timeout=5)
        listener.close()


def _worker(pipe, barrier, port, requests, offset, total, connections, stop, timeout):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the run
    report = {"start": 0.0, "end": 0.0, "latencies": b"", "statuses": {}, "cpu": 0.0}
    try:
        report.update(asyncio.run(_drive(barrier, port, requests, offset, total, connections, stop, timeout)))
    except BaseException as exc:  # reported to the parent, which raises
        report["error"] = f"{type(exc).__name__}: {exc}"
        try:
            barrier.abort()
        except Exception:
            pass
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report["cpu"] = usage.ru_utime + usage.ru_stime
    pipe.send(report)
    pipe.close()


async def _drive(barrier, port, requests, offset, total, connections, stop, timeout):
    streams = [await asyncio.open_connection(HOST, port) for _ in range(connections)]
    latencies = array("d")
    statuses: Counter = Counter()
    state = {"next": 0, "total": total}
    await asyncio.get_running_loop().run_in_executor(None, barrier.wait, 30)
    start = time.monotonic()
    deadline = start + timeout
    tasks = [
        _connection(streams[i], port, requests, offset, state, latencies, statuses, stop, deadline)
        for i in range(connections)
    ]
    # A server that stops answering ends the run with an error instead of hanging it.
    await asyncio.wait_for(asyncio.gather(*tasks), timeout + 60)
    end = time.monotonic()
    return {"start": start, "end": end, "latencies": latencies.tobytes(), "statuses": dict(statuses)}


async def _connection(stream, port, requests, offset, state, latencies, statuses, stop, deadline):
    reader, writer = stream
    count = len(requests)
    clock = time.perf_counter
    while True:
        i = state["next"]
        if state["total"] is not None and i >= state["total"]:
            break
        if stop is not None and stop.is_set():
            break
        if time.monotonic() > deadline:
            break
        state["next"] = i + 1
        t0 = clock()
        writer.write(requests[(i * 7919 + offset) % count])
        status, close = await _read_response(reader)
        latencies.append(clock() - t0)
        statuses[status] = statuses.get(status, 0) + 1
        if close:
            writer.close()
            reader, writer = await asyncio.open_connection(HOST, port)
    writer.close()


async def _read_response(reader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, close = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            raise RuntimeError("chunked responses are not supported by the load generator")
    if length:
        await reader.readexactly(length)
    return status, close


def _serve_canned(listener: socket.socket) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                        if length:
                            await reader.readexactly(length)
                writer.write(_CANNED)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, sock=listener)
        async with server:
            await server.serve_forever()

    asyncio.run(main())
