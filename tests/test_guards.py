"""The pieces behind issue 9's fixes, each on its own: query-chunked VAE attention, JSON depth, Host and
Origin rules, the log's repeat limit, connection caps, blob stamps, output checks. The real engine runs
them all in tests/test_hardening.py."""

import json
import logging
import os
import socket
import time

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map

from ollama_img.cli import outputs
from ollama_img.engine import guard, limits
from ollama_img.engine.connections import connection_caps
from ollama_img.engine.log_limit import RepeatLimit
from ollama_img.errors import UserError
from ollama_img.models.autoencoder_kl import AttentionBlock
from ollama_img.store import import_folder, inspect_folder
from ollama_img.store.verify import STAMPS_NAME, Stamps, blob_refs, check_blobs, missing_blobs

# -- VAE attention ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 16, 16, 8), (1, 12, 20, 8), (2, 8, 8, 16)])
def test_attention_in_query_chunks_is_the_whole_attention(shape, monkeypatch):
    mx.random.seed(3)
    block = AttentionBlock(shape[-1], 4)
    block.update(tree_map(lambda p: mx.random.normal(p.shape) * 0.3, block.parameters()))
    x = mx.random.normal(shape, key=mx.random.key(7))
    whole = block(x)
    n = shape[1] * shape[2]
    calls = []
    real = mx.fast.scaled_dot_product_attention

    def recording(q, k, v, **kw):
        calls.append(q.shape[2] * k.shape[2])
        return real(q, k, v, **kw)

    monkeypatch.setattr(AttentionBlock, "MAX_SCORES", n * 5)  # five queries per chunk
    monkeypatch.setattr(mx.fast, "scaled_dot_product_attention", recording)
    chunked = block(x)
    assert len(calls) == -(-n // 5) and max(calls) <= n * 5
    np.testing.assert_allclose(np.array(chunked), np.array(whole), rtol=1e-5, atol=1e-6)


def test_attention_at_2048_squared_stays_below_32_bit_scores():
    """2048x2048 images have 65,536 latent positions: one score matrix would be 2^32 entries, where
    MLX's matrix product dies of SIGFPE. Each chunk stays far below 2^31."""
    n = (2048 // 8) ** 2
    chunk = AttentionBlock.MAX_SCORES // n
    assert 1 <= chunk < n and chunk * n <= 2**28 < 2**31


# -- bodies --------------------------------------------------------------------------------------------


def test_json_nesting_is_bounded_whatever_the_decoder_allows():
    def nested(depth):
        value = {}
        for _ in range(depth - 1):
            value = {"a": value}
        return json.dumps(value).encode()

    assert limits.parse_json_body(nested(limits.MAX_JSON_DEPTH)) is not None
    for raw in (nested(limits.MAX_JSON_DEPTH + 1), b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises(UserError, match="nested deeper than"):
            limits.parse_json_body(raw)
    assert limits.parse_json_body(json.dumps([list(range(10))] * 10_000).encode())  # wide is fine


def test_text_and_pixel_bounds_name_the_limit():
    assert limits.bounded_text("x" * limits.MAX_PROMPT_CHARS, "'prompt'")
    with pytest.raises(UserError, match=f"'prompt' is too long: {limits.MAX_PROMPT_CHARS + 1} characters"):
        limits.bounded_text("x" * (limits.MAX_PROMPT_CHARS + 1), "'prompt'")
    limits.check_pixels(2048, 2048)
    limits.check_pixels(4096, 1024)
    limits.check_pixels(8192, None)  # the other side is the model's default: checked once it is known
    with pytest.raises(UserError, match=str(limits.MAX_PIXELS)):
        limits.check_pixels(2048, 2064)


# -- Host and Origin -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "local"),
    [
        ("127.0.0.1:11434", True),
        ("localhost", True),
        ("LOCALHOST:80", True),
        ("[::1]:11434", True),
        ("app.localhost", True),
        ("printer.local", True),
        ("db.internal", True),
        ("192.168.1.20", True),
        ("0.0.0.0:11434", True),
        ("", True),
        ("evil.example", False),
        ("127.0.0.1.nip.io:11434", False),
        ("localhost.evil.example", False),
        ("8.8.8.8", False),
        ("[2001:4860::8888]:80", False),
    ],
)
def test_host_names_of_this_machine(header, local):
    assert guard.is_local_host(guard.split_host(header)) is local


def test_only_loopback_listeners_check_hosts():
    assert guard.is_loopback_listener("127.0.0.1") and guard.is_loopback_listener("::1")
    assert not guard.is_loopback_listener("0.0.0.0") and not guard.is_loopback_listener("192.168.1.2")


def test_origin_patterns_match_whole_origins(monkeypatch):
    monkeypatch.setenv(guard.ORIGINS_ENV, " https://a.example ,http://*.b.example,")
    pattern = guard._origin_pattern(guard.allowed_origins())
    for origin in ("https://a.example", "http://x.b.example", "http://localhost:5173", "http://127.0.0.1"):
        assert pattern.fullmatch(origin), origin
    for origin in (
        "https://a.example.evil",
        "http://b.example",
        "https://evil.example",
        "null",
        "http://localhost.x",
    ):
        assert not pattern.fullmatch(origin), origin


# -- the log -------------------------------------------------------------------------------------------


def test_repeated_log_lines_are_held_back_then_counted():
    limit = RepeatLimit(burst=3, window=0.2)

    def record(msg):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)

    passed = [limit.filter(record("socket.accept() out of system resource")) for _ in range(100)]
    assert passed.count(True) == 3
    assert limit.filter(record("something else"))
    time.sleep(0.25)
    later = record("socket.accept() out of system resource")
    assert limit.filter(later) and "97 more like this" in later.getMessage()


# -- connections -----------------------------------------------------------------------------------------


def test_connection_caps_leave_room_for_the_socket_and_the_files():
    tcp, sock = connection_caps(8192, 512, 256)
    assert (tcp, sock) == (512, 256)
    tcp, sock = connection_caps(1024, 512, 256)
    assert tcp + sock + 256 <= 1024 and sock >= (1024 - 256) // 4
    tcp, sock = connection_caps(64, 512, 256)
    assert tcp >= 4 and sock >= 4


# -- blob stamps -------------------------------------------------------------------------------------------


def test_blobs_are_hashed_once_then_again_only_when_their_file_changes(store, tiny_folder):
    import_folder(store, "m", inspect_folder(tiny_folder))
    manifest = store.manifest("m")
    refs = blob_refs(manifest)
    assert (store.root / STAMPS_NAME).is_file()  # create recorded what it wrote
    Stamps._instances.clear()  # as a new process would see it
    hashed = []
    assert check_blobs(store, refs, on_hashed=hashed.append) == [] and hashed == []
    assert check_blobs(store, refs, rehash=True, on_hashed=hashed.append) == []
    assert len(hashed) == len({d for _, d, _ in refs})

    layer = next(la for la in manifest.layers if la.is_tensor)
    blob = store.blob_path(layer.digest)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    hashed.clear()
    (problem,) = check_blobs(store, refs, on_hashed=hashed.append)
    assert hashed == [blob.stat().st_size]
    assert problem.layer == layer.name and "does not match" in problem.problem
    Stamps._instances.clear()
    assert check_blobs(store, refs) == [problem]  # still refused by the next process

    os.utime(blob, ns=(blob.stat().st_atime_ns, blob.stat().st_mtime_ns))  # no tool can reset ctime
    assert check_blobs(store, refs)
    blob.unlink()
    assert [p.problem for p in missing_blobs(store, manifest)] == ["missing"]


def test_create_replaces_a_blob_whose_bytes_do_not_match_its_name(store, tiny_folder):
    import hashlib

    import_folder(store, "m", inspect_folder(tiny_folder))
    layer = next(la for la in store.manifest("m").layers if la.is_tensor)
    blob = store.blob_path(layer.digest)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    result = import_folder(store, "m", inspect_folder(tiny_folder))
    assert result.new_blobs == 1
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == layer.digest.removeprefix("sha256:")


# -- outputs -----------------------------------------------------------------------------------------------


def test_outputs_that_cannot_be_written_fail_up_front(tmp_path):
    sock_path = f"/tmp/oi-guard-{os.getpid()}.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock_path)
    try:
        with pytest.raises(UserError, match="not a file, a pipe or a character device"):
            outputs.check_output(sock_path, 1)
    finally:
        listener.close()
        os.unlink(sock_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    outputs.check_output(str(fifo), 1)  # a FIFO is written in place
    outputs.check_output(os.devnull, 1)
    if os.path.isdir("/proc/self"):
        with pytest.raises(UserError, match="cannot save to /proc/x.png"):
            outputs.check_output("/proc/x.png", 1)
    assert not list(tmp_path.glob(".ollama-img-*"))  # the probe leaves nothing behind


def test_pull_fetches_again_a_present_blob_whose_bytes_changed(registry, tiny_folder, tmp_path):
    import hashlib

    from ollama_img.store import Store
    from ollama_img.transfer.registry.pull import pull_model
    from ollama_img.transfer.registry.push import push_model

    source, local = Store(tmp_path / "source"), Store(tmp_path / "local")
    name = f"{registry.host}/hardening/repair:v1"
    import_folder(source, name, inspect_folder(tiny_folder))
    push_model(source, name)
    pull_model(local, name)
    layer = next(la for la in local.manifest(name).layers if la.is_tensor)
    blob = local.blob_path(layer.digest)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    again = pull_model(local, name)
    assert again.fetched == 1
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == layer.digest.removeprefix("sha256:")


# -- bodies at the ASGI layer -----------------------------------------------------------------------------


def _call(middleware, messages, *, headers=(), hang=False):
    """Run an ASGI request through `middleware`; `messages` are what the client sends, in order."""
    import asyncio

    sent = []
    incoming = list(messages)

    async def receive():
        if incoming:
            return incoming.pop(0)
        if hang:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/generate", "headers": list(headers)}
    asyncio.run(middleware(scope, receive, send))
    return sent


async def _echo(scope, receive, send):
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_body_limit_reads_bounded_bodies_and_replays_them():
    limit = guard.BodyLimit(_echo, limit=10, idle_timeout=0.2)
    parts = [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.request", "body": b"de"},
    ]
    assert _call(limit, parts)[-1]["body"] == b"abcde"
    over = [{"type": "http.request", "body": b"x" * 6, "more_body": True}] * 2
    start = _call(limit, over)[0]
    assert start["status"] == 413 and (b"connection", b"close") in start["headers"]
    assert _call(limit, [], headers=[(b"content-length", b"11")])[0]["status"] == 413  # before reading
    stalled = _call(limit, [{"type": "http.request", "body": b"ab", "more_body": True}], hang=True)
    assert stalled[0]["status"] == 408 and b"timed out" in stalled[1]["body"]
    assert _call(limit, [{"type": "http.request", "body": b"ab", "more_body": True}]) == []  # client left
