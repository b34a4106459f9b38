"""Recording: the prompt in progress and its hand-over (recorder.py), the writer thread with its bounded
queue and retention (writer.py), trace file names and reading traces back (tracefile.py)."""
