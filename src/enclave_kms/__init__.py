"""enclave-kms: a key management service whose keys are plaintext only inside an SGX enclave."""

__version__ = "0.1.0"
