"""`enclave-kms audit verify|head`: check the audit log the host stores.

The enclave writes every request as a hash-chained record signed by a key that never leaves it
(`enclave/state/audit.py`); the host only stores the records (the `audit` table of `kms.sqlite`).
`verify` reads that table directly — it needs no server — and checks sequence, links and
signatures, naming the first bad record. With `--against-server` it also asks the attested
enclave for the head of its chain, so a log that was truncated at the end, or re-signed with
another key, is caught as well: the chain alone cannot show a missing tail.

This module imports the enclave's verifier and the host's storage on purpose; the client
package itself never does (import-linter rule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from enclave_kms.cli.config import (
    connection,
    stdout_console,
)
from enclave_kms.errors import AuditError, UsageError

app = typer.Typer(no_args_is_help=True)

DB_NAME = "kms.sqlite"


def _database(path: Path) -> Path:
    db = path / DB_NAME if path.is_dir() else path
    if not db.is_file():
        raise UsageError(f"no audit log at {db} (give a data directory or its {DB_NAME})")
    return db


def read_chains(path: Path) -> dict[int, list[bytes]]:
    """Every audit chain in the log (one per enclave worker that wrote), by chain number."""
    from enclave_kms.host.storage.sqlite import SQLiteStorage

    storage = SQLiteStorage(_database(path))
    try:
        return {chain: storage.audit_records(chain) for chain in storage.audit_chains() or [0]}
    finally:
        storage.close()


@app.command("verify")
def verify_cmd(
    *,
    path: Annotated[Path, typer.Argument(help="The server's data directory, or its kms.sqlite.")],
    key_sha256: Annotated[
        str | None,
        typer.Option("--key-sha256", help="Expected audit key fingerprint (hex SHA-256 of SPKI)."),
    ] = None,
    against_server: Annotated[
        bool,
        typer.Option(
            "--against-server", help="Also compare with the attested enclave's chain head."
        ),
    ] = False,
    ctx: typer.Context,
) -> None:
    """Verify the audit chain: sequence, links, signatures; names the first bad record."""
    from enclave_kms.enclave.state.audit import verify_chain

    head = None
    if against_server:
        # The head first: records appended afterwards only make the local log longer.
        settings = connection(ctx)
        with settings.client() as kms:
            head = kms.audit_head()
        key_sha256 = key_sha256 or head.public_key_sha256
    chains = read_chains(path)
    results = {chain: verify_chain(records, key_sha256) for chain, records in chains.items()}
    out = stdout_console()
    if head is not None:
        records = chains.get(head.chain, [])
        if len(records) < head.records:
            raise AuditError(
                f"the log holds {len(records)} records but the enclave acknowledged "
                f"{head.records}: the last {head.records - len(records)} are missing"
            )
        at_head = verify_chain(records[: head.records], key_sha256)
        if at_head.last_hash.hex() != head.head_hash:
            raise AuditError(
                f"audit record {head.head_seq} differs from the one the enclave acknowledged"
            )
        out.print(f"matches the enclave's head: record {head.head_seq}, {head.head_hash[:16]}…")
    for chain, result in results.items():
        where = "" if len(results) == 1 else f"chain {chain}: "
        out.print(
            f"[green]audit log OK[/green]: {where}{result.records} records, chained and signed "
            f"by key {result.public_key_sha256[:16]}…, last {result.last_hash.hex()[:16]}…"
        )


@app.command("head")
def head_cmd(
    ctx: typer.Context,
) -> None:
    """Show the head of the enclave's audit chain and its signing key's fingerprint."""
    settings = connection(ctx)
    with settings.client() as kms:
        head = kms.audit_head()
    out = stdout_console()
    out.print(f"chain        {head.chain}")
    out.print(f"records      {head.records}")
    out.print(f"head record  {head.head_seq}  {head.head_hash}")
    out.print(f"audit key    {head.public_key_sha256}")
