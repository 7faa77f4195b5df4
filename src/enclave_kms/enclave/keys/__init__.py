"""Key operations: key types and records, and the KMS service over the sealed state.

`service.KMSService` is the public face; `keyring` holds the key records, and the service's
parts are `lifecycle` (create … purge), `wrapping` (BYOK, export) and `crypto` (use).
"""
