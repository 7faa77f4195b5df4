"""Key operations: key types, key records, and the KMS service over the sealed state."""
