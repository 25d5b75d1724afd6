"""Rebuild the small generated Mahimahi traces shipped in src/splitserve/simulator/traces/ (for tests).

Real cellular traces for experiments live outside the package (Mahimahi's, e.g.
../shared/traces/ATT-LTE-driving.up); these are synthetic and tiny.
"""

from splitserve.simulator.traces import TRACES, make_trace, save_trace

TRACES.mkdir(parents=True, exist_ok=True)
save_trace(make_trace([(10.0, 2e6)]), TRACES / "const-2mbps.up")
save_trace(make_trace([(5.0, 4e6), (5.0, 0.5e6), (5.0, 4e6)]), TRACES / "step-4-0.5-4mbps.up")
save_trace(make_trace([(2.0, 8e6), (2.0, 2e6), (2.0, 0.3e6), (2.0, 1e6), (2.0, 6e6)]), TRACES / "fluctuating.up")
for p in sorted(TRACES.glob("*.up")):
    print(p, p.stat().st_size)
