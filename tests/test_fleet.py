"""The fleet model: service curves, shared links, balancing, failures, autoscaling, aggregation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from splitserve.device_client.policy import WidthCost
from splitserve.device_client.supervisor import reconnect_delay
from splitserve.simulator.fleet.engine import FleetSim, simulate_fleet
from splitserve.simulator.fleet.links import DeviceLink, ShareCurve
from splitserve.simulator.fleet.scenario import Autoscale, DeviceCosts, Failure, FleetScenario, Profile
from splitserve.simulator.fleet.servers import Balancer, ServerGroup
from splitserve.simulator.fleet.service import ServiceCurve, load_service_curve
from splitserve.simulator.traces import make_trace

# a 4 Mbit/s link and a server that does 1 frame in 10 ms, 8 in 24 ms, 32 in 80 ms (~400 frames/s)
LINK = make_trace([(10.0, 4e6)])
CURVE = ServiceCurve.from_points([(1, 100.0), (8, 333.3), (32, 400.0)])
COSTS = DeviceCosts([WidthCost(600, 5.0, 0.6), WidthCost(1200, 5.0, 0.7), WidthCost(2600, 5.0, 0.8)])


def fleet(**kw) -> FleetScenario:  # type: ignore[no-untyped-def]
    base = dict(devices=20, duration_s=20.0, traces=[LINK], costs=COSTS, service=CURVE, servers=1, fps=10.0,
                deadline_ms=150.0, delay_ms=10.0)  # fmt: skip
    base.update(kw)
    return FleetScenario(**base)


# -- parts -------------------------------------------------------------------------
def test_service_curve_from_throughput_json(tmp_path) -> None:
    rows = [{"streams": s, "on": {"frames_per_s": fps, "mean_batch": b}}
            for s, fps, b in ((1, 60.0, 1.0), (8, 170.0, 6.0), (16, 150.0, 12.0), (32, 200.0, 30.0))]  # fmt: skip
    path = tmp_path / "st.json"
    path.write_text(json.dumps({"device": "cuda", "device_name": "H100", "rows": rows}))
    curve = load_service_curve(path)
    assert curve.device == "cuda"
    assert list(curve.batch) == [1.0, 6.0, 30.0]  # 12 was slower than 6: that point was not saturated
    assert curve.ms(1) == pytest.approx(1000 / 60)
    assert curve.ms(30) == pytest.approx(150.0)
    assert curve.ms(0.3) == curve.ms(1)  # a lone frame costs a whole batch of one
    assert curve.ms(60) > curve.ms(30)  # past the last point the time per frame goes on
    assert curve.max_frames_per_s == pytest.approx(200.0)
    with pytest.raises(ValueError, match="--workers"):
        load_service_curve(path, workers=True)
    with pytest.raises(ValueError, match="run benchmarks/server_throughput.py"):
        load_service_curve(tmp_path / "missing.json")


def test_share_curve_times_transfers_at_the_trace_rate_and_share() -> None:
    whole = ShareCurve(LINK, 0.0, 30.0)
    half = ShareCurve(LINK, 0.0, 30.0, share=lambda t: np.full_like(t, 0.5))
    seconds = whole.finish(1.0, 100_000) - 1.0
    assert seconds == pytest.approx(100_000 * 8 / 4e6 * 1500 / 1448, rel=0.02)  # TCP payload per packet
    assert half.finish(1.0, 100_000) - 1.0 == pytest.approx(2 * seconds, rel=0.02)
    link = DeviceLink(whole, delay_ms=10.0)
    first = link.send(50_000, 0.0)
    second = link.send(50_000, 0.0)  # first in, first out: it waits for the first
    assert second - first == pytest.approx(first - 0.01, rel=0.05)


def test_rotated_trace_starts_at_its_offset() -> None:
    trace = make_trace([(2.0, 1e6), (2.0, 8e6)])
    rotated = trace.rotated(2.0)
    assert ShareCurve(rotated, 0.0, 4.0).at(1.0) == pytest.approx(ShareCurve(trace, 2.0, 4.0).at(1.0), rel=0.01)


def test_balancers_spread_and_fill() -> None:
    a, b = (ServerGroup(i, s, CURVE, 64, 0.002, 256) for i, s in ((0, 3), (1, 1)))
    rr = Balancer("round-robin")
    picks = [rr.pick([a, b], 1.0, 0.0).gid for _ in range(8)]
    assert picks.count(0) == 6 and picks.count(1) == 2  # in proportion to the servers
    b.connections = 10.0
    least = Balancer("least")
    assert least.pick([a, b], 5.0, 0.0) is a
    a.connections = 36.0  # 12 per server against b's 10
    assert least.pick([a, b], 1.0, 0.0) is b
    b.ready_at = 5.0  # not ready: gets nothing
    assert {rr.pick([a, b], 1.0, 0.0).gid for _ in range(4)} == {0}
    b.up = a.up = False
    assert rr.pick([a, b], 1.0, 9.0) is None


def test_reconnect_delay_is_the_clients_backoff() -> None:
    assert reconnect_delay(0, 5.0, 1.0) == pytest.approx(0.1)
    assert reconnect_delay(3, 5.0, 0.5) == pytest.approx(0.4)
    assert reconnect_delay(10, 5.0, 1.0) == 5.0


@pytest.mark.parametrize("bad, match", [
    (dict(devices=0), "positive"), (dict(balancer="random"), "balancer"), (dict(policy="local"), "adaptive"),
    (dict(policy="fixed:7"), "widths are"), (dict(servers=1, failures=[Failure(5.0, 2)]), "kills 2 of 1"),
    (dict(traces=[]), "trace"),
    (dict(link="radio"), "link model"), (dict(link="packet"), "per device"), (dict(loss=0.1), "packet links"),
])  # fmt: skip
def test_bad_scenarios_say_what_is_wrong(bad, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        fleet(**bad)


def test_specs_parse_or_say_why() -> None:
    assert Failure.parse("120s:2:45s") == Failure(120.0, 2, 45.0)
    assert Profile.parse("ramp:10s..70s")(np.array([0.0, 40.0, 100.0])).tolist() == pytest.approx([0.1, 0.55, 1.0])
    assert Profile.parse("diurnal:100s", 0.2)(50.0) == pytest.approx(1.0)
    for spec in ("ramp:70s..10s", "sawtooth", "diurnal:0s"):
        with pytest.raises(ValueError):
            Profile.parse(spec)
    with pytest.raises(ValueError):
        Failure.parse("soon")
    with pytest.raises(ValueError):
        Autoscale(5, 2)


# -- the model ----------------------------------------------------------------------
@pytest.mark.parametrize(("policy", "loss", "server_ms"), [("adaptive", 0.0, 1.0), ("split:2", 0.02, 1.0),
                                                        ("adaptive", 0.02, 1e-6)])  # fmt: skip
def test_one_device_on_one_server_is_the_analytic_model_frame_for_frame(policy, loss, server_ms) -> None:  # type: ignore[no-untyped-def]
    """The fleet's per-device machinery (planner, head queue, packet link, server, results) is the
    single-device analytic model's: on a link with an outage, and with 2 % segment loss, every frame
    has the same decision and latency. The analytic model's server never queues; the fleet's computes
    one batch at a time, so the two agree where frames do not meet at the server: a batch takes 1 ms
    (the trace's grain) and closes 1 ns after its first frame (frames the link delivers together
    arrive a rounding error apart). Loss holds frames of different widths back to arrive together
    (head-of-line blocking), and a server computes one width's batch after the other's: with loss and
    adaptive widths the batch takes 1 ns."""
    from splitserve.simulator.analytic import simulate
    from splitserve.simulator.costs import StrategyCost
    from splitserve.simulator.link import LinkConfig
    from splitserve.simulator.strategies import Strategy

    trace = make_trace([(4.0, 3e6), (1.5, 0.08e6), (2.5, 0.4e6), (4.0, 2e6)])
    sizes, overhead, head_ms, local_ms, accs = [600, 1200, 2600], 40, 5.0, 30.0, [0.6, 0.7, 0.8]
    fps, frames, delay_ms, deadline_ms = 10.0, 120, 20.0, 150.0
    width_costs = [StrategyCost(np.array([b - overhead]), overhead, head_ms, server_ms, np.zeros(1)) for b in sizes]
    strategy = Strategy("adaptive", "entropic", adaptive=True) if policy == "adaptive" else \
        Strategy(policy, "entropic", width=2)  # fmt: skip
    expected = simulate(strategy, width_costs[-1], width_costs, LinkConfig(trace=trace, delay_ms=delay_ms, loss=loss),
                        LinkConfig(delay_ms=delay_ms, loss=loss), frames, fps, deadline_ms, seed=3,
                        local_ms=local_ms, accuracies=accs)  # fmt: skip

    costs = DeviceCosts([WidthCost(b, head_ms, a) for b, a in zip(sizes, accs, strict=True)], local_ms)
    sc = fleet(devices=1, duration_s=frames / fps, traces=[trace], fps=fps, deadline_ms=deadline_ms,
               delay_ms=delay_ms, costs=costs,
               service=ServiceCurve(np.array([1.0, 1e6]), np.array([server_ms, server_ms])), max_delay_ms=1e-6,
               policy="adaptive" if policy == "adaptive" else "fixed:2", link="packet", loss=loss,
               aggregate=False, placements=[(0, 0.0, 0.0)], seed=3)  # fmt: skip
    sim = FleetSim(sc, keep_frames=True)
    sim.run()
    got = sorted(sim.frames, key=lambda f: f.capture_s)
    assert len(got) == len(expected) == frames
    for e, g in zip(expected, got, strict=True):
        assert g.capture_s == pytest.approx(e.capture_s, abs=1e-12)
        assert (g.local, g.why) == (e.local, None), e.index
        if not e.local:
            assert (g.width, g.bytes) == (e.width, e.bytes + overhead), e.index
        assert g.latency_ms == pytest.approx(e.latency_ms, abs=1e-5), e.index
    if policy == "adaptive":  # the run takes every path: widths, local frames, misses
        assert {e.width for e in expected if not e.local} >= {0, 2} and any(e.local for e in expected)
        assert any(e.probe for e in expected)
    assert any(e.latency_ms > deadline_ms for e in expected)


def test_a_light_fleet_meets_its_deadline_and_its_latency_adds_up() -> None:
    s = simulate_fleet(fleet(devices=4, policy="fixed:0")).summary()
    assert s["miss"] == 0.0 and s["lost"] == 0.0
    # head 5 + 600 B at 4 Mbit/s (~1.2 ms) + 2 x 10 ms delay + a batch of one (10 ms) + waiting <= 2 ms
    assert 36.0 <= s["p50_ms"] <= 44.0
    assert s["width_share"] == {"0": 1.0}


def test_an_overloaded_server_misses_and_more_servers_fix_it() -> None:
    one = simulate_fleet(fleet(devices=80, servers=1)).summary()  # 800 frames/s against ~400
    three = simulate_fleet(fleet(devices=80, servers=3)).summary()
    assert one["miss"] > 0.3 and one["utilisation"] > 0.9
    assert three["miss"] < 0.05
    assert one["expired_at_server"] + one["overloaded"] > 0.1  # the server sheds what is already late


def test_a_failure_costs_its_downtime_and_the_reconnects() -> None:
    sc = fleet(devices=10, servers=1, duration_s=30.0, failures=[Failure(10.0, 1, 5.0)])
    res = simulate_fleet(sc)
    miss = res.timeline.misses / np.maximum(res.timeline.frames, 1e-9)
    assert miss[:9].max() == 0.0
    assert miss[10:15].min() > 0.95  # nothing serves while the server is down
    # back once the server serves (15 s) and each device's backoff (0.1 s doubling, jittered) ends
    assert miss[15:21].max() > 0.0 and miss[21:].max() == 0.0
    s = res.summary()
    assert s["lost"] > 0.0 and 0.15 < s["miss"] < 0.3
    assert s["worst_minute"]["start_s"] >= 10.0
    assert [e["event"] for e in res.scale_events] == ["failure"]
    report = s["failure"]
    assert report["miss_before"] < 0.01 and report["worst_5s"]["miss"] > 0.95
    assert 5.0 <= report["recovered_after_s"] <= 11.0


def test_new_servers_only_get_new_connections_unless_streams_age() -> None:
    """A replacement pod gets no streams until something reconnects: gRPC streams are pinned, unless the
    server ends them after --max-connection-age and they come back through the balancer."""
    from splitserve.simulator.fleet.engine import FleetSim

    for age, spread in ((0.0, False), (10.0, True)):
        sim = FleetSim(fleet(devices=40, servers=4, duration_s=45.0, failures=[Failure(10.0, 1, 5.0)], aggregate=False,
                             max_connection_age_s=age))  # fmt: skip
        sim.run()
        replacement = max((g for g in sim.groups if g.up), key=lambda g: g.gid)
        assert replacement.gid == 4 and replacement.ready_at == 15.0
        assert (replacement.connections >= 5) is spread, [g.connections for g in sim.groups]
        assert sum(g.connections for g in sim.groups if g.up) >= 38  # a stream or two may be reconnecting


def test_aggregated_model_matches_the_per_device_model() -> None:
    kw = dict(devices=60, servers=2, duration_s=40.0, traces=[make_trace([(3.0, 3e6), (2.0, 0.4e6), (5.0, 6e6)])],
              failures=[Failure(20.0, 1, 5.0)])  # fmt: skip
    agg = simulate_fleet(fleet(**kw)).summary()
    per = simulate_fleet(fleet(aggregate=False, **kw)).summary()
    assert abs(agg["miss"] - per["miss"]) < 0.05
    assert agg["p95_ms"] == pytest.approx(per["p95_ms"], rel=0.25)


def test_packet_links_agree_with_fluid_shares_and_carry_loss() -> None:
    kw = dict(devices=10, servers=2, duration_s=20.0, aggregate=False, failures=[Failure(8.0, 1, 3.0)])
    fluid = simulate_fleet(fleet(**kw)).summary()
    packet = simulate_fleet(fleet(link="packet", **kw)).summary()
    lossy = simulate_fleet(fleet(link="packet", loss=0.05, **kw)).summary()
    assert abs(packet["miss"] - fluid["miss"]) < 0.01
    assert packet["p50_ms"] == pytest.approx(fluid["p50_ms"], abs=4.0)
    # a lost segment costs a 200 ms retransmission timeout, and the frames behind it wait too
    assert lossy["miss"] > packet["miss"] + 0.03 and lossy["p95_ms"] > 200


def test_devices_in_one_cell_share_its_uplink() -> None:
    slow = make_trace([(10.0, 1.5e6)])
    alone = simulate_fleet(fleet(devices=8, servers=4, traces=[slow], policy="fixed:2")).summary()
    shared = simulate_fleet(fleet(devices=8, servers=4, traces=[slow], policy="fixed:2", cell_devices=8)).summary()
    assert alone["miss"] < 0.05 and shared["miss"] > 0.5  # 8 x 2.6 KB x 10/s is 2 Mbit/s: too much for 1.5


def test_the_autoscaler_follows_a_ramp() -> None:
    sc = fleet(devices=120, servers=1, duration_s=150.0, profile=Profile.parse("ramp:10s..60s", 0.1),
               autoscale=Autoscale(1, 6, target=8.0, startup_s=10.0, down_window_s=30.0),
               max_connection_age_s=20.0)  # without it the first pod keeps the streams it got early  # fmt: skip
    res = simulate_fleet(sc)
    ups = [e for e in res.scale_events if e["event"] == "scale-up"]
    assert ups, res.scale_events
    series = res.series()
    assert series["devices"][5] < 30 and series["devices"][100] == pytest.approx(120)
    assert max(series["servers_ready"]) >= 2
    late = np.array(series["miss"][120:])
    assert late.mean() < 0.05  # once scaled, the fleet meets its deadline again


def test_simulate_fleet_cli(tmp_path) -> None:
    out = tmp_path / "fleet.json"
    cmd = [sys.executable, "-m", "splitserve.simulator.cli", "fleet", "--model", "fmnist-split", "--devices", "30",
           "--servers", "1", "--minutes", "0.25", "--fail", "5s:1:3s", "--json", str(out),
           "--traces", str(tmp_path / "t.up")]  # fmt: skip
    from splitserve.simulator.traces import save_trace

    save_trace(make_trace([(5.0, 5e6)]), tmp_path / "t.up")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "missed the 150 ms deadline" in done.stdout
    data = json.loads(out.read_text())
    assert data["summary"]["frames"] == pytest.approx(30 * 15 * 10, rel=0.02)
    assert data["scale_events"][0]["event"] == "failure"
    bad = subprocess.run([*cmd[:4], "--fail", "later"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "cannot read duration 'later'" in bad.stderr


def test_a_curve_of_another_model_is_refused_and_of_another_version_warned(tmp_path, capsys) -> None:
    """The device side comes from the bundle, the server side from the curve: they must be one model."""
    from splitserve.models.zoo import load
    from splitserve.simulator.fleet import cli

    rows = [{"streams": 1, "on": {"frames_per_s": 100.0, "mean_batch": 1.0}}]
    version = str(load("fmnist-split").version)
    args = ["--model", "fmnist-split", "--devices", "2", "--service", str(tmp_path / "st.json")]
    for measured, expect in ((version, None), ("0", "measured fmnist-split v0; the bundled model is v"),
                             ("", None)):  # fmt: skip
        (tmp_path / "st.json").write_text(json.dumps({"model": "fmnist-split", "version": measured, "rows": rows}))
        for _ in range(3):
            sc = cli.scenario(cli.parser().parse_args(args))
        err = capsys.readouterr().err
        assert sc.service.version == measured
        assert (expect in err and err.count("simulate fleet:") == 1) if expect else err == ""
    (tmp_path / "st.json").write_text(json.dumps({"model": "lite0-imagenet", "version": "10", "rows": rows}))
    with pytest.raises(ValueError, match="measured lite0-imagenet, not fmnist-split"):
        cli.scenario(cli.parser().parse_args(args))
    # the curves the repository ships name the bundled versions
    for model in ("fmnist-split", "lite0-imagenet"):
        curve = load_service_curve(cli.results_path(model))
        assert (curve.model, curve.version) == (model, str(load(model).version))


def test_capacity_finds_the_devices_a_server_carries(tmp_path) -> None:
    """On a steady link the servers decide: a server of ~400 frames/s carries ~30-40 devices at 10 fps."""
    from splitserve.simulator.fleet.cli import capacity, parser
    from splitserve.simulator.traces import save_trace

    save_trace(make_trace([(60.0, 20e6)]), tmp_path / "steady.up")
    rows = [{"streams": s, "on": {"frames_per_s": fps, "mean_batch": b}}
            for s, fps, b in ((1, 100.0, 1.0), (8, 333.3, 8.0), (32, 400.0, 32.0))]  # fmt: skip
    (tmp_path / "st.json").write_text(json.dumps({"device": "cpu", "rows": rows}))
    args = parser().parse_args(["--model", "fmnist-split", "--traces", str(tmp_path / "steady.up"),
                                "--service", str(tmp_path / "st.json")])  # fmt: skip
    cap = capacity(args, progress=False)
    assert 20 <= cap["devices_per_server"] <= 40, cap["runs"]
    assert cap["link_only_miss"] == 0.0 and cap["miss_at_capacity"] <= 0.05
    assert cap["servers_for_100k_devices"] == -(-100_000 // cap["devices_per_server"])
    bigger = [v["miss"] for k, v in cap["runs"].items() if int(k) > cap["devices_per_server"]]
    assert bigger and min(bigger) > 0.05  # every larger fleet tried missed more


def test_two_saturating_devices_halve_a_cells_share() -> None:
    """The cell's scheduler: two devices in one cell each get half of what one alone gets."""
    from splitserve.simulator.fleet.engine import FleetSim

    for k in (1, 2):
        sim = FleetSim(fleet(devices=2, cell_devices=k, servers=2))
        links = [d.link for d in sim.devices]
        assert (links[0].curve is links[1].curve) == (k == 2)  # one cell: one shared capacity
        seconds = [link.send(200_000, 1.0) - 1.0 - 0.01 for link in links]
        if k == 1:
            alone = seconds[0]
    assert seconds[0] == pytest.approx(2 * alone, rel=0.02) and seconds[1] == pytest.approx(2 * alone, rel=0.02)


def test_a_failed_servers_devices_move_to_the_others() -> None:
    from splitserve.simulator.fleet.engine import FleetSim

    sim = FleetSim(fleet(devices=20, servers=4, duration_s=20.0, aggregate=False, failures=[Failure(5.0, 1, 60.0)]))
    sim.run()
    dead = [g for g in sim.groups if not g.up]
    alive = [g for g in sim.groups if g.ready(20.0)]
    assert len(dead) == 1 and len(alive) == 3
    assert dead[0].connections == 0 and not dead[0].members
    assert sum(g.connections for g in alive) == 20  # all back, on the three survivors


def test_one_seed_gives_one_result() -> None:
    """A failure disconnects devices and draws their backoff jitter in one order: a seeded run repeats."""
    kw = dict(devices=12, servers=3, duration_s=20.0, aggregate=False, failures=[Failure(5.0, 1, 5.0)])
    first, second = (simulate_fleet(fleet(**kw)).summary() for _ in range(2))
    for s in (first, second):
        s.pop("wall_s")
    assert first == second
