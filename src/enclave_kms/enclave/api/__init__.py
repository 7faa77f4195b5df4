"""The HTTPS API served inside the enclave: FastAPI app, wire models, routes, one error table."""
