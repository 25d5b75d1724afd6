"""The analytic model's adaptive loop on synthetic costs: step traces, probes, and what a frame may know."""

import numpy as np
import pytest

from splitserve.simulator import analytic
from splitserve.simulator.costs import StrategyCost
from splitserve.simulator.link import LinkConfig
from splitserve.simulator.strategies import Strategy
from splitserve.simulator.traces import link_rate_bps, make_trace, parse_step_trace, step_trace

# four widths shaped like lite0-imagenet's: 0.55 to 2.7 kB per frame, a few ms of head
BYTES = (550, 1150, 1850, 2700)
ACC = [0.10, 0.29, 0.37, 0.39]


def widths(server_ms: float = 10.0) -> list[StrategyCost]:
    rng = np.random.default_rng(0)
    return [StrategyCost((b * rng.uniform(0.85, 1.15, 64)).astype(int), 140, 4.0, server_ms, np.zeros(64), 200)
            for b in BYTES]  # fmt: skip


def run(trace, seconds: float, local_ms: float | None = 11.0, deadline_ms: float = 150.0):  # type: ignore[no-untyped-def]
    w = widths()
    return analytic.simulate(Strategy("adaptive", "entropic", adaptive=True), w[-1], w,
                             LinkConfig(trace=trace, delay_ms=20), LinkConfig(rate_bps=50e6, delay_ms=20),
                             int(seconds * 10), 10.0, deadline_ms, 0, local_ms, ACC)  # fmt: skip


def test_step_trace_and_link_rate():
    trace = step_trace(((10, 10e6), (10, 0.5e6), (10, 3e6)))
    assert trace.name == "step-10-0.5-3" and trace.period_ms == 30_000
    rate = link_rate_bps(trace, None, np.array([1.0, 12.0, 25.0, 31.0]))  # 31 s: the trace repeats
    assert rate == pytest.approx([10e6, 0.5e6, 3e6, 10e6], rel=0.02)
    assert np.isnan(link_rate_bps(None, None, np.array([0.0])))[0]
    assert link_rate_bps(None, 2e6, np.array([5.0]))[0] == 2e6
    parsed = parse_step_trace("step:10s@10mbps, 10s@0.5mbps,10s@3mbps")
    assert parsed.name == trace.name and np.array_equal(parsed.opportunities_ms, trace.opportunities_ms)
    with pytest.raises(ValueError, match="DURATION@RATE"):
        parse_step_trace("step:10s")


def test_adaptive_follows_each_step_within_two_seconds():
    trace = step_trace(((10, 10e6), (10, 0.3e6), (10, 3e6)))
    out = run(trace, 30.0)
    chosen = np.array([-1 if o.local else o.width for o in out])
    t = np.array([o.capture_s for o in out])
    # fast: the widest width; 0.3 Mbit/s: 2.7 kB would take 72 ms on the wire plus 40 RTT: narrower
    assert np.all(chosen[(t > 2) & (t < 10)] == 3)
    low = chosen[(t > 12) & (t < 20)]
    assert np.all(low < 3) and np.all(low >= 0)
    assert np.all(chosen[(t > 22) & (t < 30)] == 3)  # back up within 2 s of the rate coming back
    lat = np.array([o.latency_ms for o in out])
    assert np.mean(lat > 150) < 0.03


def test_an_outage_runs_locally_with_probes_and_recovers():
    trace = make_trace(((8, 4e6), (6, 0.012e6), (8, 4e6)))  # an outage: one packet a second
    out = run(trace, 22.0)
    t = np.array([o.capture_s for o in out])
    outage = [o for o in out if 9.5 < o.capture_s < 14]
    assert all(o.local for o in outage)
    assert any(o.probe for o in outage) and not all(o.probe for o in outage)
    after = [o for o in out if 16 < o.capture_s]
    assert all(not o.local and o.width == 3 for o in after)
    # the frames caught on the link when it died miss; a local frame never does
    lat = np.array([o.latency_ms for o in out])
    assert np.all(lat[[o.local for o in out]] < 150) and np.mean(lat[t > 9] > 150) < 0.05


def test_a_frame_never_plans_with_a_result_that_has_not_arrived():
    # on a 24 kbit/s link each frame takes a quarter to a whole second: results come back between captures
    out = run(make_trace(((10, 24e3),)), 3.0, local_ms=None, deadline_ms=0)
    for i, o in enumerate(out):
        arrived = any(p.capture_s + p.latency_ms / 1e3 <= o.capture_s for p in out[:i])
        assert (o.bandwidth_bps is not None) == arrived, i
    assert out[0].bandwidth_bps is None and out[-1].bandwidth_bps is not None


def test_without_a_local_model_it_sends_the_narrowest():
    out = run(make_trace(((5, 4e6), (5, 0.02e6))), 10.0, local_ms=None)
    late = [o for o in out if o.capture_s > 7]
    assert all(not o.local and o.width == 0 for o in late)
