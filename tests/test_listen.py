import socket

import pytest

from ollama_img.engine.listen import DEFAULT_PORT, bind_tcp, parse_host, url_of
from ollama_img.errors import UserError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, ("127.0.0.1", DEFAULT_PORT)),
        ("", ("127.0.0.1", DEFAULT_PORT)),
        ("0.0.0.0", ("0.0.0.0", DEFAULT_PORT)),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        (":9000", ("127.0.0.1", 9000)),
        ("http://localhost:1234", ("localhost", 1234)),
        ("[::1]:5000", ("::1", 5000)),
    ],
)
def test_hosts_spelled_like_ollama_host(text, expected):
    assert parse_host(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:notaport", "host:99999", "http://h:1/path"])
def test_bad_hosts(text):
    with pytest.raises(UserError, match="invalid host"):
        parse_host(text)


def test_a_taken_port_is_one_clear_line():
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}: the address is in use"):
            bind_tcp("127.0.0.1", port)
    finally:
        taken.close()


def test_port_zero_picks_a_free_port():
    sock = bind_tcp("127.0.0.1", 0)
    try:
        assert url_of(sock).startswith("http://127.0.0.1:")
        assert not url_of(sock).endswith(":0")
    finally:
        sock.close()
