"""`enclave-kms audit verify|head`: check the audit log the host stores.

The enclave writes every request as a hash-chained record signed by a key that never leaves it
(`enclave/state/audit.py`); the host only stores the records (the `audit` table of `kms.sqlite`).
`verify` reads that table directly — it needs no server, opens the database read-only and
copies it with SQLite's backup API (so a live server's database, write-ahead log included, is
read as of one instant) — and checks sequence, links and signatures, naming the first bad
record, then checks every chain against the enclave-signed state head stored beside it
(enclave/state/head.py), so a log truncated at the end is caught too. With `--against-server`
it also asks the attested enclave for the head of its chain, which also catches a host that
rolled back the log and the state head together.

This module imports the enclave's verifier and the host's storage on purpose; the client
package itself never does (import-linter rule).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
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


@dataclass(frozen=True)
class LogSnapshot:
    chains: dict[int, list[bytes]]
    state_head: bytes | None  # the signed state head blob (config/state-head), if any


def read_snapshot(path: Path) -> LogSnapshot:
    """One consistent copy of the audit log and the state head, taken read-only.

    The database is opened read-only (never migrated, never written) and copied with
    SQLite's online backup API into memory, so a live server's database (WAL mode: recent
    commits are in kms.sqlite-wal) is read as of one instant, with its write-ahead log."""
    db = _database(path)
    try:
        source = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
    except sqlite3.Error as exc:
        raise UsageError(f"cannot open {db} read-only: {exc}") from None
    copy = sqlite3.connect(":memory:")
    try:
        source.backup(copy)
        chains: dict[int, list[bytes]] = {}
        for chain, record in copy.execute("SELECT chain, record FROM audit ORDER BY seq"):
            chains.setdefault(int(chain), []).append(bytes(record))
        row = copy.execute(
            "SELECT blob FROM records WHERE kind='config' AND id='state-head'"
        ).fetchone()
    except sqlite3.Error as exc:
        raise UsageError(f"{db} is not an enclave-kms database: {exc}") from None
    finally:
        source.close()
        copy.close()
    return LogSnapshot(chains or {0: []}, None if row is None else bytes(row[0]))


def read_chains(path: Path) -> dict[int, list[bytes]]:
    """Every audit chain in the log (one per enclave worker that wrote), by chain number."""
    return read_snapshot(path).chains


def check_against_state_head(snapshot: LogSnapshot, key_sha256: str) -> int:
    """Every chain must reach at least the record the signed state head covers, and hold
    that very record: a log truncated at the end (which links and verifies on its own) is
    caught here. Returns the head's generation."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from enclave_kms.enclave.state.audit import verify_chain
    from enclave_kms.enclave.state.head import parse_signed_head

    if snapshot.state_head is None:
        raise AuditError("the database has no signed state head (cause: head-missing)")
    genesis = snapshot.chains.get(0) or next(iter(snapshot.chains.values()))
    key = serialization.load_der_public_key(bytes.fromhex(_genesis_key_hex(genesis)))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise AuditError("audit genesis key is not an EC key")
    head = parse_signed_head(snapshot.state_head, key)
    for chain, (seq, prev) in sorted(head.audit.items()):
        records = snapshot.chains.get(chain, [])
        if len(records) < seq:
            raise AuditError(
                f"chain {chain} holds {len(records)} records but the signed state head "
                f"(generation {head.generation}) covers {seq}: the log was truncated "
                "(cause: audit-truncated)"
            )
        if verify_chain(records[:seq], key_sha256).last_hash != prev:
            raise AuditError(
                f"chain {chain}: record {seq - 1} differs from the one the signed state head "
                "covers: the log was truncated or rewritten (cause: audit-truncated)"
            )
    return head.generation


def _genesis_key_hex(records: list[bytes]) -> str:
    import cbor2

    try:
        target = cbor2.loads(cbor2.loads(records[0])[0])["target"]
        bytes.fromhex(target)
    except Exception:  # noqa: BLE001 - verify_chain has already named what is wrong
        raise AuditError("audit record 0 carries no public key") from None
    return str(target)


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
    snapshot = read_snapshot(path)
    chains = snapshot.chains
    results = {chain: verify_chain(records, key_sha256) for chain, records in chains.items()}
    key_sha256 = key_sha256 or next(iter(results.values())).public_key_sha256
    if len({r.public_key_sha256 for r in results.values()}) != 1:
        raise AuditError("the audit chains are signed by different keys")
    generation = check_against_state_head(snapshot, key_sha256)
    out = stdout_console()
    out.print(f"matches the signed state head (generation {generation})")
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
            f"[green]audit log OK[/green]: {where}{result.records} records in "
            f"{result.batches} signed batches, chained and signed by key "
            f"{result.public_key_sha256[:16]}…, last {result.last_hash.hex()[:16]}…"
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
