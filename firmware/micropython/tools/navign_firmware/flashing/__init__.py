"""Bench tools behind flash.sh: beacons, SD cards, self-tests."""
