"""Traffic manager: move load away from overloaded or failed sites in fine fractions."""
