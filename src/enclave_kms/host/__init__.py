"""enclave-kms."""
