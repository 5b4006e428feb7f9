"""CLI commands on names and weights: units, strategies, angles, uniform and masked soups."""
