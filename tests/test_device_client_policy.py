import pytest

from splitserve.device_client.bandwidth import BandwidthMonitor, LinkEstimate
from splitserve.device_client.policy import AdaptivePolicy, FixedPolicy, LocalPolicy, WidthCost, make_policy


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def feed(monitor: BandwidthMonitor, clock: Clock, bps: float, rtt_ms: float, nbytes: int, n: int) -> None:
    for _ in range(n):
        clock.t += 0.1
        monitor.add(nbytes, rtt_ms + nbytes * 8 / bps * 1e3 + 3.0, 3.0)


def test_monitor_measures_rate_and_rtt():
    clock = Clock()
    m = BandwidthMonitor(clock=clock)
    feed(m, clock, 2e6, 40.0, 200, 3)  # small frames: establish RTT
    feed(m, clock, 2e6, 40.0, 4000, 8)
    est = m.estimate()
    # the first RTT floor includes a small frame's own transfer (0.8 ms): a few % high at first
    assert est.rtt_ms == pytest.approx(40.8, abs=1.0)
    assert est.bandwidth_bps == pytest.approx(2e6, rel=0.08)
    feed(m, clock, 2e6, 40.0, 200, 3)  # later small frames are corrected by the estimate
    assert m.rtt_ms() == pytest.approx(40.0, abs=0.1)


def test_monitor_skips_application_limited_samples():
    clock = Clock()
    m = BandwidthMonitor(clock=clock)
    feed(m, clock, 50e6, 40.0, 100, 10)  # 100-byte frames on a fast link: transmission is ~0 ms
    assert m.estimate().bandwidth_bps is None and m.skipped >= 9


def test_monitor_discounts_a_surprising_link():
    clock = Clock()
    steady, jumpy = BandwidthMonitor(clock=clock), BandwidthMonitor(clock=clock)
    feed(steady, clock, 2e6, 20.0, 200, 2)
    feed(jumpy, clock, 2e6, 20.0, 200, 2)
    for i in range(8):
        feed(steady, clock, 2e6, 20.0, 5000, 1)
        feed(jumpy, clock, 4e6 if i % 2 else 1e6, 20.0, 5000, 1)
    assert jumpy.estimate().bandwidth_bps < 0.7 * steady.estimate().bandwidth_bps


COSTS = [WidthCost(500, 5.0), WidthCost(1000, 6.0), WidthCost(2000, 7.0), WidthCost(4000, 8.0)]


def link(bps: float, rtt: float = 40.0) -> LinkEstimate:
    return LinkEstimate(bps, rtt, 8)


def fresh(**kw) -> AdaptivePolicy:
    return AdaptivePolicy([WidthCost(c.bytes, c.head_ms) for c in COSTS], server_ms=3.0, **kw)


def test_adaptive_picks_the_widest_width_that_fits_the_deadline():
    p = fresh()
    # 150 ms deadline with 0.9 headroom = 135 ms. At 2 Mbit/s the widest (4000 B) needs
    # 16 ms on the wire + 40 RTT + 8 head + 3 server = 67 ms: it fits.
    assert p.decide(link(2e6), 150).width == 3
    # At 0.2 Mbit/s: 2000 B needs 80 + 40 + 7 + 3 = 130 ms (fits), 4000 B needs 211 ms (does not).
    p = fresh()
    d = p.decide(link(0.2e6), 150)
    assert d.width == 2 and d.predicted_ms == pytest.approx(130.0)


def test_step_down_is_immediate_and_step_up_waits():
    p = fresh(up_after=3)
    assert p.decide(link(4e6), 150).width == 3
    assert p.decide(link(0.15e6), 150).width < 3  # bandwidth collapses: step down at once
    low = p.current
    widths = [p.decide(link(4e6), 150).width for _ in range(3)]
    assert widths[:2] == [low, low]  # recovered bandwidth: not yet
    assert widths[2] == low + 1  # one width up after three frames that fit with margin
    for _ in range(12):
        p.decide(link(4e6), 150)
    assert p.current == 3


def test_no_flapping_on_a_noisy_estimate_at_the_boundary():
    p = fresh(up_after=3)
    # bandwidth hovering where the widest width just fits / just misses
    changes, last = 0, None
    for i in range(60):
        w = p.decide(link(0.62e6 if i % 2 else 0.55e6), 150).width
        changes += last is not None and w != last
        last = w
    assert changes <= 2


def test_none_fits_narrowest_or_local():
    p = fresh()
    assert p.decide(link(20e3), 150).width == 0  # hopeless link, no local model: send the narrowest
    p = fresh(local_ms=60.0)
    d = p.decide(link(20e3), 150)
    assert d.local  # a local model that beats the narrowest width
    p = fresh(local_ms=60.0)
    assert not p.decide(link(2e6), 150).local
    assert p.decide(link(2e6), 150, connected=False).local  # server unreachable: run here


def test_local_fallback_probes_the_link_and_returns_when_it_recovers():
    p = fresh(local_ms=60.0, probe_every=5)
    decisions = [p.decide(link(20e3), 150) for _ in range(15)]
    # a run of local frames, every fifth one a narrowest-width probe that measures the link
    assert [d.local for d in decisions] == [True, True, True, True, False] * 3
    assert all(d.width == 0 for d in decisions if not d.local)
    # the estimate the probes bring back shows the link recovered: offload again
    assert not p.decide(link(2e6), 150).local
    # a fresh collapse starts a new run of local frames before the next probe
    assert [p.decide(link(20e3), 150).local for _ in range(5)] == [True, True, True, True, False]
    never = fresh(local_ms=60.0, probe_every=0)
    assert all(never.decide(link(20e3), 150).local for _ in range(30))


def test_no_estimate_yet_keeps_the_current_width():
    p = fresh()
    assert p.decide(LinkEstimate(None, None, 0), 150).width == 3


def test_policy_factory():
    assert isinstance(make_policy("fixed:2", COSTS), FixedPolicy)
    assert isinstance(make_policy("local", COSTS), LocalPolicy)
    assert isinstance(make_policy("adaptive", COSTS), AdaptivePolicy)
    for bad in ("fixed:9", "fixed:x", "greedy"):
        with pytest.raises(ValueError):
            make_policy(bad, COSTS)
