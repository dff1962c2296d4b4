"""A lab pod's client: requests sent from inside a pod's network, results as one JSON line.

Tests and chaos scenarios run it with a sidecar's ``exec`` prefix from ``lab.json``, so that
it connects to a ClusterIP exactly as the application in that pod would::

    ip netns exec <ns> python -m navigator.lab.client http http://198.19.1.10:8890/ --count 20
    {"pods": {"item-east-0": 5, ...}, "failed": 0, "errors": []}
    ip netns exec <ns> python -m navigator.lab.client tcp 198.19.2.20:7000 --send hello
    {"echo": "hello", "failed": 0, "errors": []}

It uses the standard library only and exits 0 even when requests fail: failures are data.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence


def http(
    url: str,
    count: int,
    timeout: float,
    host: str = "",
    *,
    duration: float = 0.0,
    interval: float = 0.0,
) -> dict[str, object]:
    """``count`` requests, or (``duration`` > 0) one every ``interval`` s for ``duration`` s."""
    pods: collections.Counter[str] = collections.Counter()
    errors: list[str] = []
    failed = 0
    deadline = time.monotonic() + duration
    sent = 0
    while (sent < count) if duration <= 0 else (time.monotonic() < deadline):
        sent += 1
        if interval > 0 and sent > 1:
            time.sleep(interval)
        try:
            request = urllib.request.Request(url, headers={"Host": host} if host else {})
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                pods[str(json.loads(resp.read()).get("pod", "?"))] += 1
        except (urllib.error.URLError, OSError, ValueError) as exc:
            failed += 1
            if len(errors) < 5:
                # NOTE: an Envoy's error answer says why in its body (e.g. the reset reason).
                body = ""
                if isinstance(exc, urllib.error.HTTPError):
                    with contextlib.suppress(OSError):
                        body = " " + exc.read(200).decode(errors="replace").strip()
                errors.append(f"{type(exc).__name__}: {exc}{body}")
    return {"pods": dict(pods), "failed": failed, "errors": errors, "sent": sent}


def get(url: str, timeout: float) -> dict[str, object]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return {"status": resp.status, "body": resp.read().decode(errors="replace")}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": ""}
    except (urllib.error.URLError, OSError) as exc:
        return {"status": 0, "body": "", "error": f"{type(exc).__name__}: {exc}"}


def tcp(address: str, payload: bytes, timeout: float) -> dict[str, object]:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return {"echo": data.decode(errors="replace"), "failed": 0, "errors": []}
    except OSError as exc:
        return {"echo": None, "failed": 1, "errors": [f"{type(exc).__name__}: {exc}"]}


def probe(
    http_urls: Sequence[str], tcp_addresses: Sequence[str], interval: float, timeout: float
) -> None:
    """Steady traffic until stdin closes: each target in turn, every ``interval`` s, one JSON
    line per request (``t`` is the monotonic clock, shared by every process of the machine)."""
    import select
    import threading

    stop = threading.Event()

    def watch_stdin() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([sys.stdin], [], [], 0.5)
            if ready and not os.read(sys.stdin.fileno(), 4096):
                stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    targets = [("http", u) for u in http_urls] + [("tcp", a) for a in tcp_addresses]
    while not stop.is_set():
        for kind, target in targets:
            started = time.monotonic()
            line: dict[str, object] = {"t": round(started, 4), "target": target}
            if kind == "http":
                got = http(target, 1, timeout)
                pods = got["pods"]
                line["ok"] = got["failed"] == 0
                line["pod"] = next(iter(pods), "") if isinstance(pods, dict) else ""
                line["error"] = "; ".join(got["errors"]) if got["errors"] else ""  # type: ignore[arg-type]
            else:
                got = tcp(target, b"probe\n", timeout)
                line["ok"] = got["echo"] == "probe\n"
                line["error"] = "; ".join(got["errors"]) if got["errors"] else ""  # type: ignore[arg-type]
            line["ms"] = round((time.monotonic() - started) * 1000, 1)
            print(json.dumps(line), flush=True)
        stop.wait(interval)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m navigator.lab.client", description="Requests from inside a lab pod."
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    p_http = sub.add_parser("http", help="GET a URL COUNT times; count answers per pod")
    p_http.add_argument("url")
    p_http.add_argument("--count", type=int, default=1)
    p_http.add_argument("--host", default="", help="the Host header (default: from the URL)")
    p_http.add_argument(
        "--duration", type=float, default=0.0, help="steady traffic for this long, s"
    )
    p_http.add_argument("--interval", type=float, default=0.0, help="between requests, s")
    p_get = sub.add_parser("get", help="GET a URL once; its status and body")
    p_get.add_argument("url")
    p_tcp = sub.add_parser("tcp", help="send bytes to HOST:PORT, read the echo")
    p_tcp.add_argument("address")
    p_tcp.add_argument("--send", default="hello\n")
    p_probe = sub.add_parser(
        "probe", help="steady traffic to every target until stdin closes; a JSON line each"
    )
    p_probe.add_argument("--http", action="append", default=[], help="a URL to GET")
    p_probe.add_argument("--tcp", action="append", default=[], help="HOST:PORT to echo through")
    p_probe.add_argument("--interval", type=float, default=0.2, help="between rounds, s")
    for p in (p_http, p_get, p_tcp, p_probe):
        p.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.mode == "probe":
        probe(args.http, args.tcp, args.interval, args.timeout)
        return 0
    if args.mode == "http":
        result = http(
            args.url,
            args.count,
            args.timeout,
            args.host,
            duration=args.duration,
            interval=args.interval,
        )
    elif args.mode == "get":
        result = get(args.url, args.timeout)
    else:
        result = tcp(args.address, args.send.encode(), args.timeout)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
