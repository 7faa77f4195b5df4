"""The enclave's custody of the storage root key: k-of-n split and recovery (DESIGN §14)."""
