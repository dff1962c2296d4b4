"""Fuzz target: HTTP requests against the local Kubernetes API server, on 127.0.0.1.

A real ``KubeApiServer`` (aiohttp, port 0 on 127.0.0.1) holding the lab's east manifests,
fresh for every input, gets the input's requests one by one over real connections. Each
frame is one request: control bits 0-2 pick the method (GET, POST, PUT, PATCH, DELETE, HEAD,
OPTIONS, or PROPFIND), bits 3-5 the Content-Type; the payload is the path and query,
a newline, then the body. Bytes a request line cannot carry are percent-encoded, so every
request is valid HTTP and reaches the application.

The answer must be a Kubernetes answer: never 500, and an error status comes with a
``Status`` body of that code; nothing may be logged as an internal error (a watch's failure
after its headers went out shows only there). Watches are read up to their headers and
then dropped, as a client that goes away. Two exceptions: ``/_navigator/unreachable`` is
skipped (the test hook closes the API port on purpose), and a failure that is one of
``harness.OPEN_ISSUES`` is tolerated.

Run: ``python fuzz/fuzz_kubeapi_http.py [libFuzzer flags] DIR`` with DIR a copy of
``fuzz/corpus/kubeapi_http`` (libFuzzer adds what it finds to DIR; see fuzz/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import time
import traceback
import urllib.parse
from typing import Any

import aiohttp
import harness
import yarl

with harness.instrumented(__name__):
    from navigator.kubeapi import server as kubeapi_server
    from navigator.kubeapi import store

import fuzz_kubeapi

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "PROPFIND")
"""PROPFIND: a method HTTP parsers know and the API does not (aiohttp answers a method it
does not know with a plain 400 before any application sees the request)."""
CONTENT_TYPES = (
    "application/json",
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
    "",
)
SAFE = "/?&=%:@!$'()*+,;~-._"
"""What stays as it is in a path and query; every other byte is percent-encoded."""

DRAIN_WITHIN = 5.0
"""Seconds the server may take to finish a request's handler once its client has gone."""


@dataclasses.dataclass(frozen=True)
class Answer:
    method: str
    path: str
    status: int
    body: Any


class _Errors(logging.Handler):
    """Collects what the server logs at ERROR (its "internal error" is one) or above."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def request_of(control: int, payload: bytes) -> tuple[str, str, str, bytes]:
    """(method, path and query, content type, body) of one frame."""
    target, _, body = payload.partition(b"\n")
    path = urllib.parse.quote(target, safe=SAFE)
    if not path.startswith("/"):
        path = "/" + path
    return METHODS[control & 7], path, CONTENT_TYPES[(control >> 3) & 7], body


class Api:
    """One server and one client session, reused by every input (the store is not)."""

    def __init__(self) -> None:
        self.server: kubeapi_server.KubeApiServer | None = None
        self.session: aiohttp.ClientSession | None = None
        self.errors = _Errors()

    async def start(self) -> None:
        for name in ("navigator.kubeapi", "aiohttp"):
            logger = logging.getLogger(name)
            logger.addHandler(self.errors)
            logger.propagate = False
        self.server = kubeapi_server.KubeApiServer(host="127.0.0.1", port=0, name="fuzz")
        await self.server.start()
        # NOTE: one connection per request: when a request ends, so does its handler.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=10),
            auto_decompress=False,
        )

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.server is not None:
            await self.server.stop()
        for name in ("navigator.kubeapi", "aiohttp"):
            logger = logging.getLogger(name)
            logger.removeHandler(self.errors)
            logger.propagate = True

    def reset(self, st: store.Store) -> None:
        assert self.server is not None
        self.server.store = st

    async def send(self, method: str, path: str, content_type: str, body: bytes) -> Answer:
        assert self.server is not None and self.session is not None
        url = yarl.URL(self.server.url + path, encoded=True)
        headers = {"Content-Type": content_type} if content_type else {}
        data = None if method in ("GET", "HEAD", "OPTIONS") and not body else body
        async with self.session.request(
            method, url, data=data, headers=headers, skip_auto_headers=["Content-Type"]
        ) as resp:
            watching = resp.headers.get("Transfer-Encoding") == "chunked" and resp.status == 200
            raw = b"" if watching or method == "HEAD" else await resp.read()
            status = resp.status
        if watching:
            await self._drained()
        parsed: Any = None
        if raw:
            with contextlib.suppress(ValueError):
                parsed = json.loads(raw)
        return Answer(method, path, status, parsed if raw else None)

    async def _drained(self) -> None:
        """Waits until the server has no connection left (its handlers have ended)."""
        assert self.server is not None and self.server._runner is not None
        deadline = time.monotonic() + DRAIN_WITHIN
        server = self.server._runner.server
        while server is not None and server.connections:
            assert time.monotonic() < deadline, "a dropped watch's handler did not end"
            await asyncio.sleep(0.001)

    def check(self, answer: Answer) -> None:
        errors, self.errors.records = self.errors.records, []
        known = [r for r in errors if r.exc_info and harness.open_issue(r.exc_info[1])]
        if errors and len(known) == len(errors):
            return  # NOTE: an open issue (harness.OPEN_ISSUES): its 500 is known.
        assert not errors, f"{answer.method} {answer.path}: the server logged " + "; ".join(
            r.getMessage() + "".join(traceback.format_exception(*r.exc_info) if r.exc_info else [])
            for r in errors
        )
        assert answer.status != 500, f"{answer.method} {answer.path}: 500 {answer.body}"
        if answer.status >= 400 and answer.method != "HEAD":
            body = answer.body
            assert isinstance(body, dict) and body.get("kind") == "Status", (
                f"{answer.method} {answer.path}: {answer.status} without a Status: {body!r}"
            )
            assert body.get("code") == answer.status, (answer.status, body)


@functools.cache
def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.new_event_loop()


@functools.cache
def _api() -> Api:
    """The fuzzer's server and client, started once on its loop."""
    api = Api()
    _loop().run_until_complete(api.start())
    return api


async def drive(api: Api, frames: list[harness.Frame]) -> list[Answer]:
    api.reset(fuzz_kubeapi.loaded_store())
    answers = []
    for control, payload in frames:
        method, path, content_type, body = request_of(control, payload)
        if path.startswith("/_navigator/unreachable"):
            # NOTE: the hook closes the API port on purpose (tests' and chaos' fault).
            continue
        try:
            answer = await api.send(method, path, content_type, body)
        except ValueError:
            continue  # NOTE: the client refuses to send it (e.g. a URL yarl cannot take).
        api.check(answer)
        answers.append(answer)
    return answers


def test_one_input(data: bytes) -> None:
    _, frames = harness.split_frames(data)
    _loop().run_until_complete(drive(_api(), frames))


if __name__ == "__main__":
    harness.run(
        test_one_input, mutator=harness.frames_mutator(fuzz_kubeapi.EXTRA, after_newline=True)
    )
