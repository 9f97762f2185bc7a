"""The sidecar: work beside the read path (backups; lifecycle and cost to come)."""
