"""What every step shares: the C core's loader (native.py), the settings (settings.py), the stage
vocabulary (stages.py), the log (log.py) and the one formatter for durations and byte sizes (units.py)."""
