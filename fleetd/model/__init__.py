"""Pure domain model: unit files, names, [X-Fleet] requirements, states.

No I/O and no asyncio here; everything is plain data and functions, so the scheduler and
the CLI can share it and unit tests need nothing but Python.
"""
