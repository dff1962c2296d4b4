"""A lab pod's application: an HTTP server that names itself and a TCP echo server.

Every HTTP request is answered with a JSON body naming the pod, its IP and its cluster, so a
test or a person can count where requests went. ``/healthz`` answers 200 unless the pod was
told to fail (``POST /fail`` / ``POST /recover``), which later lets tests drive Envoy's
active health checks.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

from aiohttp import web

from navigator import runtime

log = logging.getLogger(__name__)


class Pod:
    def __init__(self, *, pod: str, cluster: str, ip: str) -> None:
        self.pod = pod
        self.cluster = cluster
        self.ip = ip
        self.failing = False
        self.requests = 0

    def app(self, port: int) -> web.Application:
        async def hello(request: web.Request) -> web.Response:
            self.requests += 1
            body = {
                "pod": self.pod,
                "ip": self.ip,
                "port": port,
                "cluster": self.cluster,
                "path": request.path_qs,
                "host": request.host,
            }
            return web.json_response(body)

        async def healthz(_: web.Request) -> web.Response:
            if self.failing:
                return web.Response(status=503, text="failing\n")
            return web.Response(text="ok\n")

        async def fail(_: web.Request) -> web.Response:
            self.failing = True
            return web.Response(text="failing\n")

        async def recover(_: web.Request) -> web.Response:
            self.failing = False
            return web.Response(text="ok\n")

        app = web.Application()
        app.add_routes(
            [
                web.get("/healthz", healthz),
                web.post("/fail", fail),
                web.post("/recover", recover),
                web.route("*", "/{tail:.*}", hello),
            ]
        )
        return app


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(
    pod: Pod, *, http_ports: Sequence[int], tcp_ports: Sequence[int], stop: asyncio.Event
) -> None:
    runners: list[web.AppRunner] = []
    servers: list[asyncio.Server] = []
    try:
        for port in http_ports:
            runner = web.AppRunner(pod.app(port), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, pod.ip, port).start()
            runners.append(runner)
        for port in tcp_ports:
            servers.append(await asyncio.start_server(_echo, pod.ip, port))
        log.info(
            "pod serving",
            extra={"pod": pod.pod, "ip": pod.ip, "http": list(http_ports), "tcp": list(tcp_ports)},
        )
        await stop.wait()
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
        for runner in runners:
            await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m navigator.lab.backend", description="A lab pod: HTTP and TCP echo."
    )
    parser.add_argument("--pod", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--ip", required=True)
    parser.add_argument("--http", type=int, action="append", default=[], help="HTTP port")
    parser.add_argument("--tcp", type=int, action="append", default=[], help="TCP echo port")
    args = parser.parse_args(argv)
    runtime.setup_logging(component="backend")
    pod = Pod(pod=args.pod, cluster=args.cluster, ip=args.ip)

    async def amain(stop: asyncio.Event) -> int:
        await serve(pod, http_ports=args.http, tcp_ports=args.tcp, stop=stop)
        return 0

    return runtime.run(amain)


if __name__ == "__main__":
    raise SystemExit(main())
