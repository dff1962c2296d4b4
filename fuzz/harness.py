"""What the fuzz targets share: instrumentation, the libFuzzer entry point, input framing.

Each ``fuzz_<target>.py`` imports the product inside ``instrumented(__name__)``: instrumented
for coverage when the file runs as a fuzzer (``python fuzz/fuzz_<target>.py``), plain when
pytest imports it to reuse its harness in the hypothesis properties (``tests/fuzz/``), so the
test process never runs instrumented product code.

A target's harness returns normally on input the product refuses with its documented error
and lets anything else propagate: libFuzzer then reports a crash with the Python traceback and
writes the input as ``crash-<sha1>``.

Inputs that carry several messages are frames: one flags byte, then repeatedly a control byte,
a big-endian 16-bit length and that many bytes (a truncated last frame is cut short).
"""

from __future__ import annotations

import contextlib
import copy
import json
import shlex
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
CORPUS = Path(__file__).resolve().parent / "corpus"

INSTRUMENTED = ("navigator", "shards", "coordinator", "chaos")
"""The packages whose code guides the fuzzer (libraries are not instrumented)."""

K8S_KINDS = {
    "Service": "services",
    "Endpoints": "endpoints",
    "EndpointSlice": "endpointslices",
    "Node": "nodes",
    "Nexus": "nexuses",
    "CanaryRelease": "canaryreleases",
    "Gateway": "gateways",
    "Ingress": "ingresses",
}
"""Kubernetes ``kind`` → ``model.Kind`` value (what the informer lists each kind as)."""


def instrumented(
    module_name: str, also: Sequence[str] = ()
) -> contextlib.AbstractContextManager[Any]:
    """Instruments what is imported in the block (our packages and ``also``), only when
    ``module_name`` is ``__main__``."""
    if module_name != "__main__":
        return contextlib.nullcontext()
    import atheris

    hooks: contextlib.AbstractContextManager[Any] = atheris.instrument_imports(
        include=[*INSTRUMENTED, *also]
    )
    return hooks


def run(
    test_one_input: Callable[[bytes], None],
    *,
    mutator: Callable[[bytes, int, int], bytes] | None = None,
    argv: Sequence[str] | None = None,
) -> None:
    """libFuzzer's main loop over ``test_one_input`` (flags and corpus dirs from ``argv``)."""
    import atheris

    args = list(sys.argv if argv is None else argv)
    if args and args[0].endswith(".py"):
        # NOTE: -merge and -fork run args[0] again through sh: the same interpreter then.
        args[0] = f"{shlex.quote(sys.executable)} {shlex.quote(args[0])}"
    if mutator is None:
        atheris.Setup(args, test_one_input)
    else:
        atheris.Setup(args, test_one_input, custom_mutator=mutator)
    atheris.Fuzz()


OPEN_ISSUES: dict[str, tuple[type[BaseException], str, str]] = {
    # name: (exception, product file, function it escapes from); each has a strict xfail
    # regression test in tests/fuzz/ naming the fix, which belongs to a file the fuzzing
    # work may not change. Drop the entry with the fix (the xfail then fails: remove it).
}
"""Findings whose fix is outside what the fuzzing work may change: tolerated by the targets
(``open_issue``), so that fuzzing goes on past them to find the others."""


def open_issue(exc: BaseException) -> str | None:
    """The ``OPEN_ISSUES`` entry ``exc`` is, judged by the innermost product frame."""
    frame_file, frame_func = "", ""
    tb = exc.__traceback__
    while tb is not None:
        path = Path(tb.tb_frame.f_code.co_filename)
        if path.is_relative_to(REPO) and path.parts[len(REPO.parts)] in INSTRUMENTED:
            frame_file, frame_func = str(path.relative_to(REPO)), tb.tb_frame.f_code.co_name
        tb = tb.tb_next
    for name, (cls, file, func) in OPEN_ISSUES.items():
        if isinstance(exc, cls) and (file, func) == (frame_file, frame_func):
            if name not in _SEEN_ISSUES:
                _SEEN_ISSUES.add(name)
                print(f"open issue {name} (tolerated): {exc!r:.200}", file=sys.stderr)
            return name
    return None


_SEEN_ISSUES: set[str] = set()


Frame = tuple[int, bytes]
"""(control byte, payload)."""


def split_frames(data: bytes) -> tuple[int, list[Frame]]:
    if not data:
        return 0, []
    flags, pos, frames = data[0], 1, []
    while pos + 3 <= len(data):
        control, length = data[pos], struct.unpack_from(">H", data, pos + 1)[0]
        pos += 3
        frames.append((control, data[pos : pos + length]))
        pos += length
    return flags, frames


def join_frames(flags: int, frames: Sequence[Frame]) -> bytes:
    out = bytearray([flags])
    for control, payload in frames:
        out += struct.pack(">BH", control, len(payload)) + payload
    return bytes(out)


def json_value(data: bytes) -> tuple[bool, Any]:
    """(True, value) if ``data`` is JSON (what a client or the API server would send)."""
    try:
        return True, json.loads(data)
    except (ValueError, RecursionError):
        return False, None


# --- structure-aware mutation ------------------------------------------------------------
#
# NOTE: libFuzzer mutates bytes, and almost every byte mutation of a JSON document is no
# longer JSON: the parsers behind ``json.loads`` would see little. A target may give atheris
# a custom mutator that, half of the time, edits the document as a tree (replace a value,
# drop or add a key, duplicate a list item) with values from the document itself and from
# a pool of edge cases; the other half, libFuzzer's own byte mutation.

EDGE_VALUES: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    1,
    -1,
    80,
    65535,
    65536,
    2**31,
    2**63,
    -(2**63),
    1.5,
    1e308,
    float("inf"),
    "",
    " ",
    "0",
    "-1",
    "1e3",
    "a" * 300,
    "\ud800",
    "/",
    "a/b",
    "*",
    "None",
    "::1",
    "10.0.0.1",
    "1.2.3.4.5",
    "http",
    "grpc",
    "tcp",
    "TCP",
    "UDP",
    "SCTP",
    "9" * 5000,
    "1h",
    "999999999999999999h",
    "0.0000001s",
    [],
    {},
    [None],
    [{}],
    {"": None},
)


def _walk(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, (*path, i))


def _replace(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = new
    return doc


def mutate_json(doc: Any, rng: Any, extra: Sequence[Any] = ()) -> Any:
    """One tree edit of a JSON document (in place where it can be; returns the result)."""
    nodes = list(_walk(doc))
    strings = [k for _, v in nodes if isinstance(v, dict) for k in v]
    strings += [v for _, v in nodes if isinstance(v, str)]
    pool = [*EDGE_VALUES, *extra, *strings]
    path, node = rng.choice(nodes)
    action = rng.randrange(6)

    def pick() -> Any:
        # NOTE: a copy: the pool's lists and objects must not be shared (nor nested in
        # themselves) by the documents they go into.
        return copy.deepcopy(rng.choice(pool))

    if action == 0 and isinstance(node, dict) and node:
        del node[rng.choice(list(node))]
    elif action == 1 and isinstance(node, dict):
        node[str(rng.choice(pool))] = pick()
    elif action == 2 and isinstance(node, list) and node:
        node.insert(rng.randrange(len(node) + 1), json.loads(json.dumps(rng.choice(node))))
    elif action == 3 and isinstance(node, list) and node:
        del node[rng.randrange(len(node))]
    elif action == 4:
        # NOTE: a subtree of the document elsewhere (an object where a list is wanted...).
        donor = json.loads(json.dumps(rng.choice(nodes)[1]))
        doc = _replace(doc, path, donor)
    else:
        doc = _replace(doc, path, pick())
    return doc


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def json_mutator(extra: Sequence[Any] = ()) -> Callable[[bytes, int, int], bytes]:
    """A custom mutator for targets whose whole input is one JSON document."""
    import random

    import atheris

    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        ok, doc = json_value(data)
        if ok and rng.random() < 0.5:
            for _ in range(rng.randrange(1, 4)):
                doc = mutate_json(doc, rng, extra)
            out = _dumps(doc)
            if len(out) <= max_size:
                return out
        return bytes(atheris.Mutate(data, max_size))

    return mutate


def frames_mutator(
    extra: Sequence[Any] = (), *, after_newline: bool = False
) -> Callable[[bytes, int, int], bytes]:
    """A custom mutator for frame inputs: edits one frame, as JSON where its payload is
    (``after_newline``: the part after the first newline, an HTTP body), else as bytes; or
    drops, duplicates or swaps frames, or changes a control byte."""
    import random

    import atheris

    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        flags, frames = split_frames(data)
        if not frames or rng.random() < 0.25:
            return bytes(atheris.Mutate(data, max_size))
        i = rng.randrange(len(frames))
        control, payload = frames[i]
        action = rng.randrange(8)
        if action == 0:
            frames.insert(rng.randrange(len(frames) + 1), frames[i])
        elif action == 1 and len(frames) > 1:
            del frames[i]
        elif action == 2:
            j = rng.randrange(len(frames))
            frames[i], frames[j] = frames[j], frames[i]
        elif action == 3:
            frames[i] = (rng.randrange(256), payload)
        elif action == 4:
            flags = rng.randrange(256)
        else:
            if after_newline:
                head, _, body = payload.partition(b"\n")
            else:
                head, body = b"", payload
            ok, doc = json_value(body)
            if ok and body and rng.random() < 0.7:
                for _ in range(rng.randrange(1, 3)):
                    doc = mutate_json(doc, rng, extra)
                body = _dumps(doc)
            elif after_newline and rng.random() < 0.5:
                head = bytes(atheris.Mutate(head, max(len(head) * 2, 64)))
            else:
                body = bytes(atheris.Mutate(body, max(len(body) * 2, 64)))
            frames[i] = (control, head + b"\n" + body if after_newline else body)
        out = join_frames(flags, frames)
        return out if len(out) <= max_size else bytes(atheris.Mutate(data, max_size))

    return mutate
