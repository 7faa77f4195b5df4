"""Shared formats of the k-of-n recovery of the storage root key (wire.py)."""
