"""Read-set lineage: which files (and which bytes of them) a training job opened.

``record`` fixes the format in the lake, ``recorder`` is the daemon's side (the
read path appends, a task flushes), ``readset`` reads read-sets back, compares
them and pins one as a snapshot. See docs/lineage.md.
"""
