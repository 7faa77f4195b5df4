"""Sealed state: AES-GCM records, their in-enclave memory, the store over OCALLs, tokens, audit."""
