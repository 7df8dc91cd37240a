"""The gateway's limiter answers as the chat demo's does for the same frame timings (a manual
clock; the demo's RateLimiter and RateLimiterClient transliterated below as the reference);
client addresses honour only trusted proxies."""

import heapq
import random

import pytest

from services.gateway.ratelimit import DemoGate, LocalLimiter, client_address
from services.ratelimit.domainmodel import Limiter

INTERVAL, GRACE = 5.0, 20.0


def demo_answers(arrivals: list[float], rtt: float) -> list[bool]:
    """cloudflare/workers-chat-demo (dd32ce8) src/chat.mjs, line by line, on a manual clock:
    which frames `checkLimit()` accepts when the limiter's fetch takes `rtt` (its POST is
    applied half-way). Events: ("frame", i), ("post", -), ("answer", -), ("timeout", -)."""
    next_allowed_time = 0.0  # RateLimiter: this.nextAllowedTime = 0
    in_cooldown = False  # RateLimiterClient: this.inCooldown = false
    answers: dict[int, bool] = {}
    events: list[tuple[float, int, str, int]] = []
    seq = 0

    def at(time: float, what: str, arg: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (time, seq, what, arg))

    for i, t in enumerate(arrivals):
        at(t, "frame", i)
    cooldown = 0.0
    while events:
        now, _, what, arg = heapq.heappop(events)
        if what == "frame":  # checkLimit()
            if in_cooldown:
                answers[arg] = False
                continue
            in_cooldown = True
            at(now + rtt / 2, "post")  # this.callLimiter(): fetch(..., {method: "POST"})
            answers[arg] = True
        elif what == "post":  # RateLimiter.fetch
            next_allowed_time = max(now, next_allowed_time)
            next_allowed_time += INTERVAL
            cooldown = max(0, next_allowed_time - now - GRACE)
            at(now + rtt / 2, "answer", 0)
        elif what == "answer":  # await new Promise(resolve => setTimeout(resolve, cooldown*1000))
            at(now + cooldown, "timeout")
        elif what == "timeout":
            in_cooldown = False
    return [answers[i] for i in range(len(arrivals))]


def gateway_answers(arrivals: list[float], rtt: float) -> list[bool]:
    """The gateway's DemoGate and the ratelimit service's Limiter, on the same manual clock."""
    limiter = Limiter(INTERVAL, GRACE)
    gate = DemoGate()
    answers = []
    pending: list[tuple[float, float]] = []  # (asked at, answered at) of the charge in flight
    for t in arrivals:
        while pending and pending[0][1] <= t:
            asked, answered = pending.pop(0)
            cooldown = limiter.charge(asked + rtt / 2)
            gate.answered(asked, answered, cooldown)
        admitted = gate.admit(t)
        if admitted:
            pending.append((t, t + rtt))
        answers.append(admitted)
    return answers


def test_from_rest_five_frames_spaced_by_round_trips_pass_then_the_cooldown():
    rtt = 0.002
    # Ten frames 10 ms apart (each after the previous charge's answer), then frames at 5 s.
    arrivals = [i * 0.01 for i in range(10)] + [5.0, 5.05, 5.1, 10.1]
    expected = [True] * 5 + [False] * 5 + [False, True, False, True]
    # The fifth charge announces 5 s (25 - 20): refused until 0.04 + rtt + 5 = 5.042.
    assert demo_answers(arrivals, rtt) == expected
    assert gateway_answers(arrivals, rtt) == expected


def test_frames_inside_a_round_trip_are_refused_as_the_demo_refuses_them():
    rtt = 0.002
    arrivals = [0.0, 0.0005, 0.001, 0.0025, 0.003, 0.0046]
    assert demo_answers(arrivals, rtt) == [True, False, False, True, False, True]
    assert gateway_answers(arrivals, rtt) == demo_answers(arrivals, rtt)


@pytest.mark.parametrize("seed", range(20))
def test_same_answers_as_the_demo_for_random_timings(seed):
    rng = random.Random(seed)
    rtt = rng.choice([0.0005, 0.002, 0.05])
    t, arrivals = 0.0, []
    for _ in range(200):
        t += rng.choice([0.0001, 0.001, 0.003, 0.5, 2.0, 6.0, 30.0]) * rng.random()
        arrivals.append(t)
    assert gateway_answers(arrivals, rtt) == demo_answers(arrivals, rtt)


def test_retry_after_says_how_long_the_announced_cooldown_still_runs():
    gate = DemoGate()
    assert gate.admit(0.0)
    assert not gate.admit(0.0005)  # the charge is in flight: about a round trip
    assert gate.retry_after(0.0005) == 0.001
    gate.answered(0.0, 0.002, 5.0)
    assert not gate.admit(1.0)
    assert gate.retry_after(1.0) == pytest.approx(4.002)
    assert gate.retry_after(5.0019) == 0.001  # never 0: "now" is not yet
    assert gate.admit(5.002)


def test_the_local_fallback_charges_by_the_demo_rule():
    limiter = LocalLimiter(interval=5, grace=20)
    # From rest at one instant the pushes go 5, 10, 15, 20 (no cooldown), then 25: 5 s.
    assert [limiter.charge("ip", now=0) for _ in range(5)] == [0, 0, 0, 0, 5]
    # A charge always pushes (the demo's POST): 30 s ahead at t=0 -> 10 s cooldown.
    assert limiter.charge("ip", now=0) == 10
    # A quiet minute resets the burst; another address has its own limit.
    assert limiter.charge("ip", now=100) == 0
    assert limiter.charge("other", now=0) == 0


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
