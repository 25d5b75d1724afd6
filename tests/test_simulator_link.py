import numpy as np
import pytest

from splitserve.simulator.link import LinkConfig, LinkEmulator
from splitserve.simulator.loss import BernoulliLoss, GilbertElliottLoss
from splitserve.simulator.traces import bundled_traces, load_trace, make_trace, save_trace
from splitserve.simulator.units import parse_fraction, parse_rate, parse_rate_range, parse_size, parse_time_ms


def test_constant_rate_serializes_packets_back_to_back():
    link = LinkEmulator(LinkConfig(rate_bps=2e6, delay_ms=20))
    t = [link.send_stream(1500, 0.0) for _ in range(100)]
    # 1500 B at 2 Mbit/s = 6 ms each, plus 20 ms propagation
    assert t[0] == pytest.approx(0.006 + 0.020)
    assert np.allclose(np.diff(t), 0.006)
    goodput = 100 * 1500 * 8 / (t[-1] - 0.020)
    assert goodput == pytest.approx(2e6, rel=1e-9)


def test_idle_link_does_not_bank_capacity():
    link = LinkEmulator(LinkConfig(rate_bps=1e6))
    link.send_stream(1000, 0.0)
    assert link.send_stream(1000, 5.0) == pytest.approx(5.008)


def test_jitter_spreads_delay_and_keeps_a_stream_in_order():
    link = LinkEmulator(LinkConfig(rate_bps=100e6, delay_ms=30, jitter_ms=5), seed=3)
    times = [link.send_stream(100, i * 0.001) for i in range(2000)]
    assert np.all(np.diff(times) >= 0)
    delays = np.array(link.stats.delays_ms)
    assert delays.mean() == pytest.approx(30, abs=0.5)
    assert delays.std() == pytest.approx(5, rel=0.2)


def test_stream_loss_costs_a_retransmission_timeout():
    link = LinkEmulator(LinkConfig(rate_bps=10e6, delay_ms=10, loss=0.2, rto_ms=200), seed=1)
    t = [link.send_stream(1000, i * 0.01) for i in range(2000)]
    late = np.array(t) - np.arange(2000) * 0.01
    assert link.stats.lost / 2000 == pytest.approx(0.2 * 1.25, rel=0.15)  # retransmissions get lost too
    assert np.mean(late > 0.15) > 0.1


def test_datagram_loss_rate_within_sampling_error():
    n, p = 20000, 0.05
    link = LinkEmulator(LinkConfig(rate_bps=1e9, loss=p), seed=2)
    lost = sum(link.send_datagram(200, i * 1e-4) is None for i in range(n))
    assert abs(lost / n - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_droptail_queue_drops_datagrams_that_do_not_fit():
    link = LinkEmulator(LinkConfig(rate_bps=1e6, queue_bytes=15_000))
    delivered = [link.send_datagram(1500, 0.0) for _ in range(30)]
    assert sum(d is not None for d in delivered) == 10 and link.stats.dropped_queue == 20


def test_trace_playback_follows_the_opportunities_and_repeats():
    trace = make_trace([(1.0, 1.2e6)])  # one 1500-byte packet every 10 ms
    assert trace.mean_rate_bps == pytest.approx(1.2e6, rel=0.01)
    link = LinkEmulator(LinkConfig(trace=trace))
    times = [link.send_stream(1500, 0.0) for _ in range(250)]
    assert np.allclose(np.diff(times), 0.010, atol=1e-9)
    assert times[-1] == pytest.approx(2.5, abs=0.011)  # two and a half periods


def test_trace_step_slows_the_link_down():
    trace = make_trace([(1.0, 4e6), (1.0, 0.4e6)])
    link = LinkEmulator(LinkConfig(trace=trace))
    fast = link.send_stream(1500, 0.1)
    link2 = LinkEmulator(LinkConfig(trace=trace))
    slow = link2.send_stream(1500, 1.1)
    assert (fast - 0.1) < 0.004 and (slow - 1.1) > 0.02


def test_mahimahi_files_round_trip_and_bad_files_are_clear(tmp_path):
    trace = make_trace([(2.0, 3e6)])
    save_trace(trace, tmp_path / "t.up")
    back = load_trace(tmp_path / "t.up")
    assert np.array_equal(back.opportunities_ms, trace.opportunities_ms) and back.period_ms == trace.period_ms
    (tmp_path / "bad.up").write_text("1\n2\nhello\n")
    with pytest.raises(ValueError, match="line 3"):
        load_trace(tmp_path / "bad.up")
    (tmp_path / "back.up").write_text("5\n3\n")
    with pytest.raises(ValueError, match="never decrease"):
        load_trace(tmp_path / "back.up")
    assert {p.name for p in bundled_traces()} >= {"const-2mbps.up", "step-4-0.5-4mbps.up"}
    assert load_trace("const-2mbps.up").mean_rate_bps == pytest.approx(2e6, rel=0.01)


def test_real_uplink_trace_loads():
    from pathlib import Path

    att = Path(__file__).resolve().parents[2] / "shared" / "traces" / "ATT-LTE-driving.up"
    if not att.is_file():
        pytest.skip("the shared Mahimahi traces are not beside this checkout")
    trace = load_trace(att)
    assert 0.1e6 < trace.mean_rate_bps < 50e6


def test_gilbert_elliott_statistics():
    ge = GilbertElliottLoss.from_mean(0.05, burst=4.0, seed=5)
    assert ge.mean_loss == pytest.approx(0.05)
    n = 200_000
    losses = np.array([ge.lost() for _ in range(n)])
    assert losses.mean() == pytest.approx(0.05, rel=0.1)
    # losses come in bursts: mean run length of consecutive losses ~ 4
    edges = np.diff(np.concatenate([[0], losses.astype(int), [0]]))
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    assert runs.mean() == pytest.approx(4.0, rel=0.15)
    bern = np.array([BernoulliLoss(0.05, seed=6).lost() for _ in range(10)])  # smoke
    assert bern.dtype == bool


def test_units():
    assert parse_rate("2mbps") == 2e6 and parse_rate("500kbps") == 5e5 and parse_rate("2Mbit/s") == 2e6
    assert parse_time_ms("20ms") == 20 and parse_time_ms("0.1s") == 100
    assert parse_fraction("1%") == 0.01 and parse_size("64kb") == 64000
    assert parse_rate_range("0.1mbps..50mbps") == (1e5, 5e7)
    for bad, fn in (("fast", parse_rate), ("2 parsecs", parse_rate), ("150%", parse_fraction)):
        with pytest.raises(ValueError):
            fn(bad)
