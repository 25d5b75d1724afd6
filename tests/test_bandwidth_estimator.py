"""The bandwidth monitor on synthetic links: steps, ramps, outages and noise (virtual time, no sockets)."""

import math

import numpy as np
import pytest

from splitserve.device_client.bandwidth import BandwidthMonitor

RTT_MS, SERVER_MS, FPS = 40.0, 3.0, 10.0


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def run(rate_at, seconds: float, nbytes: int = 2700, noise: float = 0.0, seed: int = 0, monitor=None, clock=None):  # type: ignore[no-untyped-def]
    """Frames at FPS over a link whose rate is rate_at(t); returns (times, true rates, estimates, monitor)."""
    clock = clock or Clock()
    m = monitor or BandwidthMonitor(clock=clock)
    rng = np.random.default_rng(seed)
    times, truth, est = [], [], []
    t_end = clock.t + seconds
    while clock.t < t_end - 1e-9:
        rate = rate_at(clock.t) * (math.exp(rng.normal(0.0, noise)) if noise else 1.0)
        # entropy-coded payloads vary frame to frame; a new session starts with a few narrow frames
        size = int(nbytes * (0.25 if monitor is None and len(times) < 3 else rng.uniform(0.8, 1.2)))
        elapsed = RTT_MS + size * 8 / rate * 1e3 + SERVER_MS
        clock.t += elapsed / 1e3
        m.add(size, elapsed, SERVER_MS)
        clock.t = max(clock.t, len(times) and times[-1] + 1 / FPS)
        times.append(clock.t)
        truth.append(rate_at(clock.t))
        est.append(m.estimate().bandwidth_bps)
    return np.array(times), np.array(truth), np.array(est), m


def test_steady_link_is_measured_with_its_rtt():
    _, _, est, m = run(lambda t: 2e6, 5.0)
    assert est[-1] == pytest.approx(2e6, rel=0.05)
    assert m.rtt_ms() == pytest.approx(RTT_MS, abs=2.0)


def test_step_down_is_followed_at_once_without_overshoot():
    clock = Clock()
    _, _, _, m = run(lambda t: 10e6, 10.0, clock=clock)
    times, truth, est, _ = run(lambda t: 0.5e6, 3.0, monitor=m, clock=clock)
    # the first result after the drop pulls the estimate most of the way; by the third it is there
    assert est[0] < 0.5 * 10e6
    assert np.all(est[2:] <= 1.2 * 0.5e6)


def test_step_up_is_followed_within_two_seconds():
    clock = Clock()
    _, _, _, m = run(lambda t: 0.5e6, 10.0, clock=clock)
    start = clock.t
    times, _, est, _ = run(lambda t: 3e6, 4.0, monitor=m, clock=clock)
    reached = times[np.argmax(est >= 0.8 * 3e6)] - start
    assert est.max() >= 0.8 * 3e6 and reached <= 2.0


def test_ramp_is_tracked():
    times, truth, est, _ = run(lambda t: 0.5e6 + 0.2e6 * t, 20.0)  # 0.5 to 4.5 Mbit/s
    ratio = est[30:] / truth[30:]  # after 3 s: the first seconds bootstrap the RTT
    slow = truth[30:] < 2e6  # transmission >= 10 ms: an RTT off by a ms or two hardly shows
    assert np.all(ratio[slow] > 0.75) and np.all(ratio[slow] < 1.25)
    # faster, a frame takes a few ms, and frames all of one size (+-20 %) cannot refresh the RTT
    # (that needs two sizes: widths, probes): the error grows, but stays bounded
    assert np.all(ratio > 0.75) and np.all(ratio < 1.5)


def test_noisy_link_median_and_uncertainty():
    _, _, est, noisy = run(lambda t: 2e6, 30.0, noise=0.4, seed=3)
    _, _, _, steady = run(lambda t: 2e6, 30.0)
    assert np.median(est[50:]) == pytest.approx(2e6, rel=0.3)
    # the filter learns how surprising the link is: a noisy link has a wider predictive spread
    assert noisy.estimate().sigma > 2 * steady.estimate().sigma
    assert 0.2 < noisy.estimate().sigma < 1.0


def test_outage_in_flight_frame_caps_the_estimate_and_a_probe_recovers_it():
    clock = Clock()
    _, _, _, m = run(lambda t: 3e6, 5.0, clock=clock)
    assert m.estimate().bandwidth_bps == pytest.approx(3e6, rel=0.1)
    # the link dies: a frame goes out and its result does not come back
    sent = clock.t
    clock.t += 0.3
    capped = m.estimate([(2700, sent)]).bandwidth_bps
    assert capped < 2700 * 8 / 0.2  # less than the frame's bytes over the time it has waited
    clock.t += 1.0
    assert m.estimate([(2700, sent)]).bandwidth_bps < capped  # the longer it waits, the lower
    # it comes back 4 s late: a sample of the dead link
    m.add(2700, (clock.t - sent) * 1e3 + 3000, SERVER_MS)
    clock.t += 3.0
    low = m.estimate().bandwidth_bps
    assert low < 0.1e6
    # the link recovers; local frames measure nothing, one narrow probe every 0.5 s does
    start = clock.t
    recovered = None
    while clock.t < start + 3.0:
        clock.t += 0.5
        m.add(700, RTT_MS + 700 * 8 / 3e6 * 1e3 + SERVER_MS, SERVER_MS)
        if recovered is None and m.estimate().bandwidth_bps >= 0.8e6:
            recovered = clock.t - start
    # one probe is enough to let wider widths out again (they then measure the rest)
    assert recovered is not None and recovered <= 1.0


def test_a_fast_link_lifts_the_estimate_although_frames_are_too_small_to_time():
    clock = Clock()
    _, _, _, m = run(lambda t: 0.1e6, 5.0, nbytes=700, clock=clock)
    assert m.estimate().bandwidth_bps < 0.2e6
    # 700 B at 20 Mbit/s take 0.3 ms: no throughput sample, but a lower bound on the rate
    clock.t += 2.0
    m.add(700, RTT_MS + 700 * 8 / 20e6 * 1e3 + SERVER_MS, SERVER_MS)
    assert m.estimate().bandwidth_bps > 0.5e6
    assert m.skipped >= 1


def test_backlog_counts_bytes_still_queued():
    clock = Clock()
    _, _, _, m = run(lambda t: 1e6, 5.0, clock=clock)
    now = clock.t
    # two 5000-byte frames sent just now on a 1 Mbit/s link: neither can have left the queue
    backlog = m.estimate([(5000, now), (5000, now)]).backlog_bytes
    assert backlog == pytest.approx(10_000, rel=0.01)
    clock.t += 0.05  # 50 ms later about 6250 bytes have gone
    assert m.estimate([(5000, now), (5000, now)]).backlog_bytes == pytest.approx(10_000 - 6250, rel=0.15)


def test_a_frame_left_unanswered_behind_answered_ones_does_not_hold_the_estimate_down():
    clock = Clock()
    _, _, _, m = run(lambda t: 2e6, 3.0, clock=clock)
    lost = clock.t  # this frame's answer never comes (the server dropped it, or it was lost)
    _, _, _, m = run(lambda t: 2e6, 5.0, monitor=m, clock=clock)  # later frames come back
    assert m.estimate([(2700, lost)]).bandwidth_bps == pytest.approx(2e6, rel=0.2)
    # a frame sent after the last answer still counts
    clock.t += 1.0
    assert m.estimate([(2700, lost), (2700, clock.t - 0.9)]).bandwidth_bps < 0.1e6
