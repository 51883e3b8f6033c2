"""blackhole-lab: reproduce, measure and fix the blackhole of long-lived TCP connections.

One folder per layer, each importing only from itself and the ones below it (README
"Architecture", held by tests/test_layers.py): net -> images -> config -> model -> lb ->
workload -> backends -> load -> capture -> experiment -> tm -> tm.live -> ops -> vm -> cli.
"""

__version__ = "0.1.0"
