"""tierfs: a versioned ML data lake in object storage, mounted as a POSIX directory."""

__version__ = "0.1.0"
