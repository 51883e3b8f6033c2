"""The traffic manager's control loop on real traffic in the lab.

Processes, each inside its own lab namespace:
    site     an HTTP service per site: CPU cost per plan, a CPU budget it enforces, and a
             report of its CPU time per (home site, plan) written to the run's scratch dir
    client   load generators: paced keep-alive requests per (home, plan), recycled connections
    probe    health checks of every site, from inside the lb namespace
In the lab's own process:
    scenario the live-*.toml format and its validation
    lb       LVS-NAT services on the nft engine with weights from the shift table
    stats    reading and validating the sites' reports (garbage or silence is reported, not fatal)
    manager  one control step: measurements + health -> new shift table, and why (pure)
    runner   build the lab, run the scenario's timeline and the loop, tear everything down
    report   timelines, events.csv, the bars' numbers, the PNG
"""
