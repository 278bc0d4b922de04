"""Process isolation: a stage that runs its actions in a child Python process.

``frames`` is the wire format, ``process`` the child processes and their pool,
``session`` the parent's side of one isolated stage, ``child`` the program the
child runs (``python -m asyncflow._core.isolation.child``).
"""
