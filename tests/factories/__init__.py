"""Helpers shared by the test modules (a test module imports them from here, never from another test module):
the workflow in a temporary folder (workflow), fake dataset roots (datasets), tiny networks and their settings
(networks)."""
