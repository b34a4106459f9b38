"""The surfaces that show what StageTrace recorded to the outside: the read-only HTTP routes under
``/stagetrace/`` (routes.py). They render recorded facts; none computes its own figures."""
