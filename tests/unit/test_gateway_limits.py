"""The gateway's fallback limiter follows the chat demo's rule; client addresses honour only
trusted proxies."""

import pytest

from services.gateway.ratelimit import LocalLimiter, client_address


def test_the_demo_rule_against_a_hand_computed_schedule():
    limiter = LocalLimiter(interval=5, grace=20)
    # At t=0 the next allowed time goes 5, 10, 15, 20: four frames pass, the fifth would
    # put it 25 s ahead (5 s past the grace): refused, cooldown 5 s, and it pushes nothing.
    assert [limiter.take("ip", now=0).allowed for _ in range(5)] == [True] * 4 + [False]
    assert limiter.take("ip", now=0).cooldown == 5
    # At t=5 one more passes (next allowed 25), at t=5.1 not; at t=10 again one.
    assert limiter.take("ip", now=5).allowed
    refused = limiter.take("ip", now=5.1)
    assert not refused.allowed and refused.cooldown == pytest.approx(4.9)
    assert limiter.take("ip", now=10).allowed
    # A quiet minute resets the burst.
    assert [limiter.take("ip", now=100).allowed for _ in range(5)] == [True] * 4 + [False]
    # Another address has its own limit.
    assert limiter.take("other", now=0).allowed


@pytest.mark.parametrize(
    "peer, forwarded, trusted, expected",
    [
        ("203.0.113.9", None, set(), "203.0.113.9"),
        ("203.0.113.9", "198.51.100.1", set(), "203.0.113.9"),  # an untrusted peer's header
        ("10.0.0.2", "198.51.100.1", {"10.0.0.2"}, "198.51.100.1"),
        ("10.0.0.2", "6.6.6.6, 198.51.100.1, 10.0.0.3", {"10.0.0.2", "10.0.0.3"}, "198.51.100.1"),
        ("10.0.0.2", "not-an-ip", {"10.0.0.2"}, "10.0.0.2"),
        (None, None, set(), "unknown"),
    ],
)
def test_the_client_address(peer, forwarded, trusted, expected):
    assert client_address(peer, forwarded, frozenset(trusted)) == expected
