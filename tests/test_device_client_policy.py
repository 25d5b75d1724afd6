import pytest

from splitserve.device_client.bandwidth import BandwidthMonitor, LinkEstimate
from splitserve.device_client.policy import (
    AdaptivePolicy,
    FixedPolicy,
    FramePlanner,
    LocalPolicy,
    WidthCost,
    make_policy,
    manifest_accuracy,
)


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
    feed(m, clock, 2e6, 40.0, 200, 3)  # small frames, then large ones: two sizes separate RTT and rate
    feed(m, clock, 2e6, 40.0, 4000, 8)
    est = m.estimate()
    assert est.rtt_ms == pytest.approx(40.0, abs=0.5)
    assert est.bandwidth_bps == pytest.approx(2e6, rel=0.05)


def test_monitor_application_limited_frames_give_only_a_lower_bound():
    clock = Clock()
    m = BandwidthMonitor(clock=clock)
    feed(m, clock, 50e6, 40.0, 100, 10)  # 100-byte frames on a fast link: transmission is ~0 ms
    assert m.samples == 0 and m.skipped == 10
    # no throughput sample, but the link moved 100 bytes in less than the 4 ms it can resolve
    assert m.estimate().bandwidth_bps == pytest.approx(100 * 8 / 4.0e-3, rel=0.05)


def test_monitor_is_less_sure_of_a_surprising_link():
    clock = Clock()
    steady, jumpy = BandwidthMonitor(clock=clock), BandwidthMonitor(clock=clock)
    feed(steady, clock, 2e6, 20.0, 200, 2)
    feed(jumpy, clock, 2e6, 20.0, 200, 2)
    for i in range(16):
        feed(steady, clock, 2e6, 20.0, 5000, 1)
        feed(jumpy, clock, 4e6 if i % 2 else 1e6, 20.0, 5000, 1)
    s, j = steady.estimate(), jumpy.estimate()
    assert j.sigma > 2 * s.sigma
    assert j.rate_quantile(-1.28) < 0.7 * s.rate_quantile(-1.28)


COSTS = [WidthCost(500, 5.0), WidthCost(1000, 6.0), WidthCost(2000, 7.0), WidthCost(4000, 8.0)]


def link(bps: float, rtt: float = 40.0) -> LinkEstimate:
    return LinkEstimate(bps, rtt, 8)


def fresh(**kw) -> AdaptivePolicy:
    return AdaptivePolicy([WidthCost(c.bytes, c.head_ms) for c in COSTS], server_ms=3.0, **kw)


def test_adaptive_picks_the_widest_width_that_fits_the_deadline():
    p = fresh(up_after=1)
    # 150 ms deadline with 0.9 headroom = 135 ms. At 2 Mbit/s the widest (4000 B) needs
    # 16 ms on the wire + 40 RTT + 8 head + 3 server = 67 ms: it fits.
    assert p.decide(link(2e6), 150).width == 3
    # At 0.2 Mbit/s: 2000 B needs 80 + 40 + 7 + 3 = 130 ms (fits), 4000 B needs 211 ms (does not).
    p = fresh(up_after=1)
    d = p.decide(link(0.2e6), 150)
    assert d.width == 2 and d.predicted_ms == pytest.approx(130.0)


def test_step_down_is_immediate_and_step_up_waits():
    p = fresh(up_after=3)
    assert [p.decide(link(4e6), 150).width for _ in range(3)] == [0, 0, 3]  # a session starts narrow
    assert p.decide(link(0.15e6), 150).width < 3  # bandwidth collapses: step down at once
    low = p.current
    widths = [p.decide(link(4e6), 150).width for _ in range(3)]
    assert widths[:2] == [low, low]  # recovered bandwidth: not yet
    assert widths[2] == 3  # up to the best width after three frames in a row where it fits


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
    # every frame runs locally (the answer never waits on the link); every fifth also sends a
    # narrowest-width probe, whose round trip measures the link
    assert all(d.local for d in decisions)
    assert [d.probe for d in decisions] == [False, False, False, False, True] * 3
    assert all(d.width == 0 for d in decisions if d.probe)
    # the estimate the probes bring back shows the link recovered: offload again
    assert not p.decide(link(2e6), 150).local
    # a fresh collapse starts a new run of local frames before the next probe
    assert [p.decide(link(20e3), 150).probe for _ in range(5)] == [False, False, False, False, True]
    never = fresh(local_ms=60.0, probe_every=0)
    assert not any(never.decide(link(20e3), 150).probe for _ in range(30))


def test_no_estimate_yet_starts_narrow_then_keeps_the_current_width():
    p = fresh(up_after=1)
    assert p.decide(LinkEstimate(None, None, 0), 150).width == 0
    assert p.decide(link(4e6), 150).width == 3
    assert p.decide(LinkEstimate(None, None, 0), 150).width == 3


def test_policy_factory():
    assert isinstance(make_policy("fixed:2", COSTS), FixedPolicy)
    assert isinstance(make_policy("local", COSTS), LocalPolicy)
    assert isinstance(make_policy("adaptive", COSTS), AdaptivePolicy)
    for bad in ("fixed:9", "fixed:x", "greedy"):
        with pytest.raises(ValueError):
            make_policy(bad, COSTS)


def test_uncertainty_makes_the_same_median_carry_a_narrower_width():
    # 0.3 Mbit/s: the widest (4000 B) needs 107 ms on the wire + 40 RTT + 8 head + 3 server: it misses;
    # 2000 B fits at the median (53 + 51 = 104 ms < 135) with room for some doubt, not for a lot
    sure, unsure = fresh(up_after=1), fresh(up_after=1)
    assert sure.decide(LinkEstimate(0.3e6, 40.0, 8, sigma=0.05), 150).width == 2
    assert unsure.decide(LinkEstimate(0.3e6, 40.0, 8, sigma=0.6), 150).width < 2


def test_expected_accuracy_prefers_a_sure_width_over_a_marginally_better_risky_one():
    costs = [WidthCost(500, 5.0, 0.70), WidthCost(1000, 6.0, 0.71), WidthCost(2000, 7.0, 0.90)]
    p = AdaptivePolicy(costs, server_ms=3.0, up_after=1, confidence=0.5)
    # at 0.1 Mbit/s, width 1 needs 93 kbit/s to make 135 ms: it does only ~60 % of the time,
    # 0.71 x ~0.6 < 0.70 x ~1
    est = LinkEstimate(0.1e6, 40.0, 8, sigma=0.3)
    assert 0.5 < p.p_on_time(1, est, 150) < 0.8 and p.p_on_time(0, est, 150) > 0.95
    assert p.decide(est, 150).width == 0
    # when the sure width is much worse, the risk is worth taking: 0.71 x ~0.6 > 0.30 x ~1
    costs[0].accuracy = 0.30
    assert AdaptivePolicy(costs, server_ms=3.0, up_after=1, confidence=0.5).decide(est, 150).width == 1


def test_queued_bytes_count_against_the_next_frame():
    p = fresh(up_after=1)
    assert p.decide(LinkEstimate(0.4e6, 40.0, 8), 150).width == 3  # 80 + 40 + 8 + 3 = 131 ms
    # 3000 bytes still ahead of it on a 0.4 Mbit/s link: 60 ms more, and only width 1 fits
    p = fresh(up_after=1)
    assert p.decide(LinkEstimate(0.4e6, 40.0, 8, backlog_bytes=3000), 150).width == 1


def test_frame_planner_feeds_the_monitor_and_the_policy():
    clock = Clock()
    policy = fresh(up_after=1)
    planner = FramePlanner(policy, BandwidthMonitor(clock=clock))
    decision, estimate = planner.plan(150)
    assert estimate.bandwidth_bps is None and decision.width == 0  # nothing measured: the narrowest
    for nbytes in (500, 4000, 500, 4000):
        clock.t += 0.1
        planner.encoded(3, nbytes, 9.0)
        planner.result(nbytes, 40.0 + nbytes * 8 / 0.3e6 * 1e3 + 5.0, 5.0)
    decision, estimate = planner.plan(150)
    assert estimate.bandwidth_bps == pytest.approx(0.3e6, rel=0.1)
    assert policy.server_ms > 3.0 and policy.costs[3].head_ms > 8.0  # it learned what frames cost
    assert decision.width < 3
    # a frame in flight for a while says the link has slowed, before its result returns
    clock.t += 0.5
    _, slowed = planner.plan(150, pending=[(4000, clock.t - 0.5)])
    assert slowed.bandwidth_bps < estimate.bandwidth_bps


def test_manifest_accuracy_prefers_labels_then_agreement():
    assert manifest_accuracy({"accuracy": 0.7, "agreement": 0.9}) == 0.7
    assert manifest_accuracy({"accuracy": None, "agreement": 0.9}) == 0.9
    assert manifest_accuracy({}) is None
