"""Traffic manager: move load away from overloaded or failed sites in fine fractions.

Pure, exact, deterministic logic (no network):
    model    plans, sites, thresholds, shifts; TOML/JSON state files
    shift    one control step, `plan(state) -> Decision`; `weights` for the load balancer
    fit      the max threshold from (utilisation, p95 latency) samples
    predict  where a withdrawn site's (or pair's) traffic would go, and whether it fits
    cli      `lab tm plan|predict|fit`
"""
