"""The client address behind trusted proxies, and the unit the throttle counts."""

import pytest

from quart_tokengate.service.proxies import client_address, throttle_address

TRUSTED = ("10.0.0.0/8", "fd00::/8")


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.5", ["1.2.3.4"], TRUSTED, "203.0.113.5"),  # not from a proxy: header ignored
        ("10.0.0.1", ["1.2.3.4"], (), "10.0.0.1"),  # no proxies trusted: header ignored
        ("10.0.0.1", ["1.2.3.4"], TRUSTED, "1.2.3.4"),
        ("10.0.0.1", ["6.6.6.6, 1.2.3.4"], TRUSTED, "1.2.3.4"),  # the left part is the client's
        ("10.0.0.1", ["1.2.3.4, 10.0.0.9"], TRUSTED, "1.2.3.4"),  # two proxies in a row
        ("10.0.0.1", ["1.2.3.4", "10.0.0.9"], TRUSTED, "1.2.3.4"),  # the header sent twice
        ("10.0.0.1", ["junk, 10.0.0.9"], TRUSTED, "10.0.0.9"),  # unreadable: the last trusted hop
        ("10.0.0.1", ["[2001:db8::1]:443"], TRUSTED, "2001:db8::1"),
        ("10.0.0.1", ["1.2.3.4:5555"], TRUSTED, "1.2.3.4"),
        ("fd00::1", ["2001:db8::7"], TRUSTED, "2001:db8::7"),
        ("10.0.0.1", [], TRUSTED, "10.0.0.1"),
    ],
)
def test_the_rightmost_untrusted_hop_is_the_client(peer, forwarded, trusted, expected):
    assert client_address(peer, forwarded, trusted) == expected


def test_the_throttle_counts_ipv4_addresses_and_ipv6_64s():
    assert throttle_address("203.0.113.5") == "203.0.113.5"
    assert throttle_address("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert throttle_address("::ffff:203.0.113.5") == "203.0.113.5"
    assert throttle_address("") == "unknown"
