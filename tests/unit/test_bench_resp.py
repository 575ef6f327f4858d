"""The lean RESP wire of the hot path: encoding and incremental parsing (pure)."""

from __future__ import annotations

import pytest

from dispatcher.resp import Parser, RespError, _Endpoint, encode_command


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert encode_command(["EVALSHA", "ab", 2, b"k\r\n", 1.5]) == (
        b"*5\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$3\r\nk\r\n\r\n$3\r\n1.5\r\n")


@pytest.mark.parametrize("cut", range(1, 40))
def test_replies_split_anywhere_come_out_whole_and_in_order(cut: int) -> None:
    wire = (b"+OK\r\n:42\r\n$5\r\nhe\r\no\r\n$-1\r\n"
            b"*3\r\n$7\r\nclaimed\r\n:1\r\n:0\r\n-NOSCRIPT x\r\n")
    parser = Parser()
    replies = parser.feed(wire[:cut]) + parser.feed(wire[cut:])
    assert replies[:5] == [b"OK", 42, b"he\r\no", None, [b"claimed", 1, 0]]
    assert isinstance(replies[5], RespError) and str(replies[5]) == "NOSCRIPT x"


def test_tcp_tls_and_unix_socket_urls_use_the_lean_wire() -> None:
    assert _Endpoint("redis://127.0.0.1:6379/3").hello == [["SELECT", 3]]
    with pytest.raises(ValueError, match="unsupported Redis URL scheme 'http'"):
        _Endpoint("http://127.0.0.1:6379")
    unix = _Endpoint("unix://:secret@/tmp/redis.sock?db=2")
    assert (unix.path, unix.hello) == ("/tmp/redis.sock", [["AUTH", "secret"], ["SELECT", 2]])
    tls = _Endpoint("rediss://bob:pw@example:6380/1")
    assert (tls.host, tls.port, tls.hello) == ("example", 6380, [["AUTH", "bob", "pw"],
                                                                 ["SELECT", 1]])
