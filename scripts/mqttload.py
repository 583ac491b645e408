"""MQTT load for the benchmark's `mqtt` section: one publisher process, or a bare drain.

    python scripts/mqttload.py publish PORT TOPIC PAYLOADS [--rate R] [--times FILE]
    python scripts/mqttload.py drain PORT TOPIC COUNT

`publish` sends each line of the file PAYLOADS as one message at QoS 1 (as fast as the
broker takes them, or R messages per second), then prints `{"start": t}` (wall clock,
just before the first publish) once the broker has acknowledged them all; `--times`
writes each message's publish time. `drain` subscribes at QoS 1, acknowledges at once
(no database) and prints `{"ready": t}` when subscribed, then `{"end": t}` at the
COUNT-th message: the ceiling of the MQTT plumbing on this machine.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time

import paho.mqtt.client as paho

HOST = "127.0.0.1"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _text(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("!H", len(raw)) + raw


class _Publisher:
    """A raw MQTT 5 publisher: pre-encoded QoS 1 PUBLISH packets, PUBACKs read by a
    thread, at most WINDOW unacknowledged. (paho spends more CPU per message than the
    worker under test, and a generator must not be what is measured.)"""

    WINDOW = 1000

    def __init__(self, port: int, client_id: str):
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Protocol "MQTT" level 5, clean start, keep-alive 60 s, no properties.
        self.sock.sendall(_packet(0x10, _text("MQTT") + bytes([5, 0x02]) + struct.pack("!H", 60) + b"\0"
                                  + _text(client_id)))  # fmt: skip
        self.window = threading.Semaphore(self.WINDOW)
        self.acked = 0
        self.all_acked = threading.Event()
        self.expected = None
        self.connected = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.connected.wait(10):
            raise RuntimeError("no CONNACK")

    def _read(self):
        buffer = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:  # closed by run() once everything is acknowledged
                return
            if not chunk:
                return
            buffer += chunk
            while True:
                if len(buffer) < 2:
                    break
                length, shift, pos = 0, 0, 1
                while pos < len(buffer):
                    byte = buffer[pos]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    pos += 1
                    if not byte & 0x80:
                        break
                else:
                    break
                if len(buffer) < pos + length:
                    break
                kind, buffer = buffer[0] >> 4, buffer[pos + length :]
                if kind == 2:  # CONNACK
                    self.connected.set()
                elif kind == 4:  # PUBACK
                    self.window.release()
                    self.acked += 1
                    if self.acked == self.expected:
                        self.all_acked.set()

    def run(self, topic: str, payloads: list[bytes], *, rate: float = 0) -> tuple[float, list[float]]:
        prefix = _text(topic)
        packets = [_packet(0x32, prefix + struct.pack("!H", i % 65535 + 1) + b"\0" + payload)
                   for i, payload in enumerate(payloads)]  # fmt: skip
        self.expected = len(packets)
        times = [0.0] * len(packets)
        start = time.time()
        i = 0
        while i < len(packets):
            if rate:
                due = int((time.time() - start) * rate) + 1
                if due <= i:
                    time.sleep(max(0.0, start + i / rate - time.time()))
                    continue
                end = min(due, len(packets))
            else:
                end = min(i + 64, len(packets))
            for _ in range(i, end):
                self.window.acquire()
            self.sock.sendall(b"".join(packets[i:end]))
            now = time.time()
            times[i:end] = [now] * (end - i)
            i = end
        if not self.all_acked.wait(300):
            raise RuntimeError(f"only {self.acked} of {len(packets)} messages acknowledged")
        self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        self.sock.close()
        return start, times


def publish(port: int, topic: str, payloads: list[bytes], *, rate: float = 0, times_path: str | None = None):
    start, times = _Publisher(port, "bench-publisher").run(topic, payloads, rate=rate)
    if times_path:
        with open(times_path, "w") as out:
            json.dump(times, out)
    print(json.dumps({"start": start, "published": time.time()}), flush=True)


def drain(port: int, topic: str, count: int):
    done = threading.Event()
    received = [0]

    def on_message(client, userdata, message):
        received[0] += 1
        if received[0] == count:
            print(json.dumps({"end": time.time()}), flush=True)
            done.set()

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        print(json.dumps({"ready": time.time()}), flush=True)

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-drain", protocol=paho.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect(HOST, port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    done.wait(600)
    client.disconnect()
    client.loop_stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    pub = sub.add_parser("publish")
    pub.add_argument("port", type=int)
    pub.add_argument("topic")
    pub.add_argument("payloads")
    pub.add_argument("--rate", type=float, default=0)
    pub.add_argument("--times")
    dr = sub.add_parser("drain")
    dr.add_argument("port", type=int)
    dr.add_argument("topic")
    dr.add_argument("count", type=int)
    args = parser.parse_args(argv)
    if args.mode == "publish":
        with open(args.payloads, "rb") as source:
            payloads = source.read().splitlines()
        publish(args.port, args.topic, payloads, rate=args.rate, times_path=args.times)
    else:
        drain(args.port, args.topic, args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
