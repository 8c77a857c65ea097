"""Variational zoneout, an rnnreg plug-in rule (README.md)."""
