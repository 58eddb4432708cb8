"""Scenario files shipped with the simulator (`sim scenario --list`)."""
