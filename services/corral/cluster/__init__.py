"""Cluster state in Redis shared by workers and routers (the only thing both read and write)."""
