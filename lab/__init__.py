"""blackhole-lab: reproduce, measure and fix the blackhole of long-lived TCP connections.

Layers, each knowing only the ones below it (see README "Architecture"):
topology -> lb -> backends -> load -> faults -> capture -> trial -> matrix -> report/cli.
"""

__version__ = "0.1.0"
