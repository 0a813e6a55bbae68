"""The engine: one elected fleetd places units on machines (watch -> snapshot -> plan -> apply)."""
