"""The client CLI through the real entry point: `attest` refusals and their exit codes,
`policy from-server`, `init`, configuration precedence, key and crypto commands against the
real simulated KMS, and `audit verify` on real and tampered logs."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_kms.attestation.policy import Policy
from enclave_kms.cli import exits
from enclave_kms.cli.config import resolve
from enclave_kms.cli.main import main
from enclave_kms.platform.sim.pcs import TcbScenario
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.sgx.tutorial import EnclaveInfo
from tests.client.fakes import OTHER_MR_ENCLAVE, Behaviour, FakeServer, World, identity
from tests.client.real_server import RealKMS

ENV = (
    "ENCLAVE_KMS_URL",
    "ENCLAVE_KMS_TOKEN",
    "ENCLAVE_KMS_TOKEN_FILE",
    "ENCLAVE_KMS_POLICY",
    "ENCLAVE_KMS_TRUST_ROOT",
    "ENCLAVE_KMS_PCCS",
    "ENCLAVE_KMS_CONFIG",
)


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def error_line(self) -> str:
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("error: ")
        return lines[0]


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No real user config or environment leaks into a test."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "config" / "config.toml"
    monkeypatch.setenv("ENCLAVE_KMS_CONFIG", str(config))
    return config


Runner = Callable[..., Run]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Runner:
    def run(*args: str | Path) -> Run:
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        assert isinstance(exc.value.code, int)
        return Run(exc.value.code, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("cli-world")
    return World(SimPlatform.init(base / "platform"), base)


# --------------------------------------------------------------------------- attest refusals


REFUSALS = [
    # name, server factory, trust root?, policy overrides (None = no --policy), exit, message
    (
        "mrenclave-not-in-policy",
        lambda w: FakeServer(w, identity(mr_enclave=OTHER_MR_ENCLAVE)),
        True,
        {},
        exits.POLICY,
        "is not one of the accepted values",
    ),
    (
        "debug-enclave-pinned-policy",
        lambda w: FakeServer(w, identity(debug=True)),
        True,
        {},
        exits.POLICY,
        "debug enclave",
    ),
    (
        "no-policy-no-identity",  # issue 17: no policy used to mean "any genuine enclave"
        lambda w: FakeServer(w, identity()),
        True,
        None,
        exits.USAGE,
        "pins no enclave identity",
    ),
    (
        "policy-without-identity",
        lambda w: FakeServer(w, identity(debug=True)),
        True,
        {"mr_enclave": (), "mr_signer": None},
        exits.USAGE,
        "pins no enclave identity",
    ),
    (
        "simulated-root-not-named",
        lambda w: FakeServer(w, identity()),
        True,
        {"simulated_root": None},
        exits.POLICY,
        "is not named by the policy",
    ),
    (
        "simulated-root-not-trusted",
        lambda w: FakeServer(w, identity()),
        False,
        {},
        exits.EVIDENCE_INVALID,
        "simulated root",
    ),
    (
        "certificate-without-evidence",
        lambda w: FakeServer(w, None),
        True,
        {},
        exits.EVIDENCE_INVALID,
        "carries no attestation evidence",
    ),
    (
        "evidence-binds-another-key",
        lambda w: FakeServer(w, identity(), bound_key=ec.generate_private_key(ec.SECP256R1())),
        True,
        {},
        exits.EVIDENCE_INVALID,
        "does not bind this certificate's public key",
    ),
    (
        "replayed-nonce-answer",
        lambda w: FakeServer(w, identity(), Behaviour(answer="replay")),
        True,
        {},
        exits.EVIDENCE_INVALID,
        "stale or replayed",
    ),
    (
        "expired-collateral",
        lambda w: FakeServer(w, identity(), Behaviour(collateral_age=timedelta(days=60))),
        True,
        {},
        exits.COLLATERAL,
        "expired",
    ),
    (
        "tcb-status-not-accepted",
        lambda w: FakeServer(w, identity(), Behaviour(scenario=TcbScenario.OUT_OF_DATE)),
        True,
        {},
        exits.POLICY,
        "tcb_status OutOfDate is not accepted",
    ),
]


@pytest.mark.parametrize(
    ("name", "server", "root", "overrides", "code", "says"),
    REFUSALS,
    ids=[r[0] for r in REFUSALS],
)
def test_attest_refuses_with_its_exit_code(
    cli: Runner,
    world: World,
    name: str,
    server: Callable[[World], FakeServer],
    root: bool,
    overrides: dict[str, object] | None,
    code: int,
    says: str,
) -> None:
    args: list[str | Path] = []
    if root:
        args += ["--trust-root", world.root_pem_path]
    if overrides is not None:
        args += ["--policy", world.policy_toml(name, **overrides)]
    with server(world) as fake:
        r = cli("attest", fake.url, *args)
    assert r.code == code, r.err
    assert says in r.error_line()
    assert "Traceback" not in r.err


def test_attest_shows_the_verified_identity_and_the_tutorial_json(
    cli: Runner, world: World
) -> None:
    policy = world.policy_toml("good")
    with FakeServer(world, identity()) as fake:
        table = cli("attest", fake.url, "--trust-root", world.root_pem_path, "--policy", policy)
        as_json = cli(
            "attest", fake.url, "--trust-root", world.root_pem_path, "--policy", policy, "--json"
        )
        facts = cli(
            "attest",
            fake.url,
            "--trust-root",
            world.root_pem_path,
            "--policy",
            policy,
            "--verified-json",
        )
    assert table.code == exits.OK, table.err
    for label in (
        "MRENCLAVE",
        "MRSIGNER",
        "ProductID",
        "SVN",
        "Debug enclave",
        "TCB status",
        "Advisories",
        "SIMULATED root",
        "TLS key (SPKI SHA-256)",
    ):
        assert label in table.out
    assert identity().mr_enclave.hex()[:32] in table.out.replace("\n", "").replace(" ", "").replace(
        "│", ""
    )
    info = EnclaveInfo.parse(as_json.out)
    assert info.mr_enclave == identity().mr_enclave
    assert info.binds_held_data()
    assert info.inconsistencies() == []
    doc = json.loads(facts.out)
    assert doc["tcb_status"] == "UpToDate"
    assert doc["simulated"] is True
    assert doc["isv_svn"] == 2


def test_policy_from_server_pins_what_it_sees(cli: Runner, world: World, tmp_path: Path) -> None:
    out = tmp_path / "pinned.toml"
    with FakeServer(world, identity(), Behaviour(scenario=TcbScenario.SW_HARDENING_NEEDED)) as fake:
        r = cli(
            "policy", "from-server", fake.url, "--trust-root", world.root_pem_path, "--out", out
        )
        assert r.code == exits.OK, r.err
        assert "trust on first use" in r.err.lower()
        assert "SIMULATED" in r.err
        policy = Policy.from_toml(out.read_bytes())
        assert policy.mr_enclave == (identity().mr_enclave,)
        assert policy.mr_signer == identity().mr_signer
        assert policy.min_isv_svn == 2
        assert not policy.allow_debug
        assert [s.value for s in policy.accepted_tcb_statuses] == ["UpToDate", "SWHardeningNeeded"]
        assert policy.simulated_root == world.root.spki_sha256
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        again = cli("attest", fake.url, "--trust-root", world.root_pem_path, "--policy", out)
        assert again.code == exits.OK, again.err
        refused = cli("policy", "from-server", fake.url, "--out", out)
        assert refused.code == exits.USAGE  # never overwrites without --force
        untrusted = cli("policy", "from-server", fake.url, "--out", tmp_path / "x.toml")
        assert untrusted.code == exits.EVIDENCE_INVALID  # a simulated root is never implicit
    with FakeServer(world, identity(mr_enclave=OTHER_MR_ENCLAVE)) as other:
        r = cli("attest", other.url, "--trust-root", world.root_pem_path, "--policy", out)
        assert r.code == exits.POLICY


def test_init_stores_the_token_privately_and_records_the_settings(
    cli: Runner, world: World, tmp_path: Path, isolated: Path
) -> None:
    policy = world.policy_toml("init")
    token_file = tmp_path / "secret" / "token"
    with FakeServer(world, identity()) as fake:
        r = cli(
            "init",
            fake.url,
            "--trust-root",
            world.root_pem_path,
            "--policy",
            policy,
            "--token-file",
            token_file,
        )
        assert r.code == exits.OK, r.err
        assert "fake-admin-secret" not in r.out + r.err  # never printed
        assert token_file.read_text().strip() == "ekms_0123456789abcdef_fake-admin-secret"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        settings = resolve()
        assert settings.url == fake.url
        assert settings.policy == policy.resolve()
        assert settings.trust_root == world.root_pem_path.resolve()
        assert settings.token() == "ekms_0123456789abcdef_fake-admin-secret"
        assert stat.S_IMODE(isolated.stat().st_mode) == 0o600
        again = cli("init", fake.url, "--token-file", token_file)
        assert again.code == exits.USAGE
        assert "exists" in again.error_line()


def test_settings_come_from_flags_then_environment_then_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated: Path
) -> None:
    isolated.parent.mkdir(parents=True)
    isolated.write_text('url = "https://file:1"\npolicy = "p.toml"\ntoken_file = "tok"\n')
    s = resolve()
    assert s.url == "https://file:1"
    assert s.policy == isolated.parent / "p.toml"  # relative to the config file
    assert s.token_file == isolated.parent / "tok"
    monkeypatch.setenv("ENCLAVE_KMS_URL", "https://env:2")
    monkeypatch.setenv("ENCLAVE_KMS_POLICY", "/env/policy.toml")
    monkeypatch.setenv("ENCLAVE_KMS_TOKEN", "ekms_env_token")
    s = resolve()
    assert (s.url, s.policy, s.token()) == (
        "https://env:2",
        Path("/env/policy.toml"),
        "ekms_env_token",
    )
    s = resolve(url="https://flag:3", policy=Path("flag.toml"))
    assert (s.url, s.policy) == ("https://flag:3", Path("flag.toml"))
    assert "ekms_env_token" not in repr(s)


def test_a_token_file_others_can_read_is_refused(cli: Runner, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("ekms_x\n")
    token.chmod(0o644)
    r = cli("key", "list", "--url", "https://127.0.0.1:9", "--token-file", token)
    assert r.code == exits.USAGE
    assert "chmod 600" in r.error_line()


def test_config_show_never_shows_the_token(cli: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCLAVE_KMS_TOKEN", "ekms_do_not_print")
    r = cli("config", "show", "--url", "https://h:1")
    assert r.code == exits.OK
    assert "ekms_do_not_print" not in r.out
    assert "present" in r.out


# --------------------------------------------------------------------------- against the real KMS


@pytest.fixture
def real_env(real_kms: RealKMS, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> RealKMS:
    policy = tmp_path / "policy.toml"
    policy.write_text(real_kms.policy.to_toml())
    monkeypatch.setenv("ENCLAVE_KMS_URL", real_kms.url)
    monkeypatch.setenv("ENCLAVE_KMS_TOKEN", real_kms.token)
    monkeypatch.setenv("ENCLAVE_KMS_POLICY", str(policy))
    monkeypatch.setenv("ENCLAVE_KMS_TRUST_ROOT", str(real_kms.root_path))
    return real_kms


def test_keys_and_crypto_commands(cli: Runner, real_env: RealKMS, tmp_path: Path) -> None:
    run = cli
    r = run("key", "create", "cli-orders")
    assert r.code == exits.OK, r.err
    assert "cli-orders" in r.out
    assert "aes256-gcm" in r.out
    assert run("key", "create", "cli-orders").code == exits.SERVER

    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"\x00card 4111\xff")
    enc = tmp_path / "card.enc"
    r = run("encrypt", "cli-orders", "--in", plain, "--out", enc, "--aad", "order 7")
    assert r.code == exits.OK, r.err
    assert enc.read_text().startswith("ekms:v1:")
    back = tmp_path / "back.bin"
    r = run("decrypt", "cli-orders", "--in", enc, "--out", back, "--aad", "order 7")
    assert r.code == exits.OK, r.err
    assert back.read_bytes() == plain.read_bytes()
    assert stat.S_IMODE(back.stat().st_mode) == 0o600
    r = run("decrypt", "cli-orders", "--in", enc, "--base64", "--aad", "order 7")
    assert base64.b64decode(r.out) == plain.read_bytes()
    wrong_aad = run("decrypt", "cli-orders", "--in", enc)
    assert wrong_aad.code == exits.SERVER
    assert wrong_aad.error_line().startswith("error: ")

    r = run("key", "rotate", "cli-orders")
    assert r.code == exits.OK
    r = run("rewrap", "cli-orders", "--in", enc, "--aad", "order 7")
    assert r.out.startswith("ekms:v2:")

    r = run("key", "create", "cli-sign", "--type", "ec-p256")
    assert r.code == exits.OK, r.err
    r = run("sign", "cli-sign", "--in", plain)
    sig = r.out.strip()
    assert sig.startswith("ekms:v1:")
    assert run("verify", "cli-sign", "--in", plain, "--signature", sig).out.strip() == "valid"
    other = tmp_path / "other.bin"
    other.write_bytes(b"tampered")
    bad = run("verify", "cli-sign", "--in", other, "--signature", sig)
    assert bad.code == exits.EVIDENCE_INVALID
    assert "NOT valid" in bad.error_line()

    run("key", "create", "cli-mac", "--type", "hmac-sha256")
    mac = run("hmac", "cli-mac", "--in", plain).out.strip()
    assert run("hmac", "cli-mac", "--in", plain, "--verify", mac).out.strip() == "valid"
    assert run("hmac", "cli-mac", "--in", other, "--verify", mac).code == exits.EVIDENCE_INVALID

    r = run("random", "24", "--base64")
    assert len(base64.b64decode(r.out)) == 24
    assert len(bytes.fromhex(run("random", "8", "--hex").out.strip())) == 8

    dk = json.loads(run("datakey", "cli-orders").out)
    assert len(base64.b64decode(dk["plaintext"])) == 32
    key_file = tmp_path / "dk.bin"
    r = run("datakey", "cli-orders", "--plaintext-out", key_file)
    assert r.out.startswith("ekms:v2:")
    assert len(key_file.read_bytes()) == 32

    r = run("key", "list")
    assert "cli-orders" in r.out
    assert "cli-sign" in r.out
    r = run("key", "show", "cli-sign")
    assert "BEGIN PUBLIC KEY" in r.out
    assert run("key", "config", "cli-orders", "--disable").code == exits.OK
    assert run("encrypt", "cli-orders", "--in", plain).code == exits.SERVER
    assert run("key", "delete", "cli-orders", "--days", "2").code == exits.OK
    assert "deletion scheduled" not in run("key", "restore", "cli-orders").out
    assert run("key", "show", "cli-nothing").code == exits.SERVER


def test_import_export_and_tokens(cli: Runner, real_env: RealKMS, tmp_path: Path) -> None:
    run = cli
    material = tmp_path / "aes.key"
    material.write_bytes(os.urandom(32))
    r = run(
        "key", "import", "cli-byok", "--type", "aes256-gcm", "--material", material, "--exportable"
    )
    assert r.code == exits.OK, r.err
    out = tmp_path / "exported.key"
    assert run("key", "export", "cli-byok", "--out", out).code == exits.OK
    assert out.read_bytes() == material.read_bytes()
    pem = tmp_path / "ec.pem"
    from cryptography.hazmat.primitives import serialization

    private = ec.generate_private_key(ec.SECP384R1())
    pem.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    r = run("key", "import", "cli-byok-ec", "--type", "ec-p384", "--material", pem)
    assert r.code == exits.OK, r.err

    r = run("token", "create", "cli-app", "--ops", "encrypt", "--keys", "cli-byok*")
    assert r.code == exits.OK, r.err
    token = r.out.strip()
    assert token.startswith("ekms_")
    listed = run("token", "list")
    assert "cli-app" in listed.out
    assert token not in listed.out
    token_id = token.split("_")[1]
    plain = tmp_path / "p"
    plain.write_bytes(b"x")
    app_token = tmp_path / "app-token"
    app_token.write_text(token)
    app_token.chmod(0o600)
    ok = run("encrypt", "cli-byok", "--in", plain, "--token-file", app_token)
    assert ok.code == exits.OK, ok.err
    denied = run("decrypt", "cli-byok", "--in", plain, "--token-file", app_token)
    assert denied.code == exits.SERVER
    assert run("token", "revoke", token_id).code == exits.OK
    gone = run("encrypt", "cli-byok", "--in", plain, "--token-file", app_token)
    assert gone.code == exits.SERVER


def _copy_db(real_kms: RealKMS, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / f"{name}.sqlite"
    with sqlite3.connect(real_kms.data_dir / "kms.sqlite") as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    return copy


def test_audit_verify_accepts_the_real_log_and_names_the_first_bad_record(
    cli: Runner, real_env: RealKMS, tmp_path: Path
) -> None:
    run = cli
    r = run("audit", "verify", real_env.data_dir)
    assert r.code == exits.OK, r.err
    assert "audit log OK" in r.out
    r = run("audit", "verify", real_env.data_dir, "--against-server")
    assert r.code == exits.OK, r.err
    assert "matches the enclave's head" in r.out

    altered = _copy_db(real_env, tmp_path, "altered")
    with sqlite3.connect(altered) as db:
        seq, blob = db.execute(
            "SELECT seq, record FROM audit ORDER BY seq LIMIT 1 OFFSET 3"
        ).fetchone()
        changed = bytearray(blob)
        changed[-1] ^= 1
        db.execute("UPDATE audit SET record = ? WHERE seq = ?", (bytes(changed), seq))
    r = run("audit", "verify", altered)
    assert r.code == exits.SERVER
    assert "audit record 3" in r.error_line()

    missing = _copy_db(real_env, tmp_path, "missing")
    with sqlite3.connect(missing) as db:
        db.execute(
            "DELETE FROM audit WHERE seq = (SELECT seq FROM audit ORDER BY seq LIMIT 1 OFFSET 2)"
        )
    r = run("audit", "verify", missing)
    assert r.code == exits.SERVER
    assert "audit record 2" in r.error_line()

    truncated = _copy_db(real_env, tmp_path, "truncated")
    with sqlite3.connect(truncated) as db:
        db.execute("DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)")
    # Alone the truncated chain links and verifies; the signed state head beside it shows
    # the missing tail (and the attested server does too).
    r = run("audit", "verify", truncated)
    assert r.code == exits.SERVER
    assert "truncated" in r.error_line()
    assert "audit-truncated" in r.error_line()
    r = run("audit", "verify", truncated, "--against-server")
    assert r.code == exits.SERVER
    assert "truncated" in r.error_line()

    # Read-only: verifying the live database writes nothing to it.
    live = real_env.data_dir / "kms.sqlite"
    before = live.stat().st_mtime_ns, live.stat().st_size
    assert run("audit", "verify", real_env.data_dir).code == exits.OK
    assert (live.stat().st_mtime_ns, live.stat().st_size) == before
    assert run("audit", "verify", tmp_path / "nowhere").code == exits.USAGE


def test_wait_also_waits_for_the_trust_root_file(cli: Runner, world: World, tmp_path: Path) -> None:
    import threading

    root = tmp_path / "later" / "sim-root.pem"
    policy = world.policy_toml("wait")
    with FakeServer(world, identity()) as fake:
        missing = cli("attest", fake.url, "--trust-root", root, "--policy", policy)
        assert missing.code == exits.USAGE
        assert "trust root file not found" in missing.error_line()

        def appear() -> None:
            time.sleep(1.0)
            root.parent.mkdir()
            root.write_bytes(world.root_pem_path.read_bytes())

        writer = threading.Thread(target=appear)
        writer.start()
        waited = cli("attest", fake.url, "--trust-root", root, "--policy", policy, "--wait", "30")
        writer.join()
    assert waited.code == exits.OK, waited.err
    assert "attested" in waited.out


def test_errors_name_flags_and_one_rule_for_changing_a_key(cli: Runner, real_env: RealKMS) -> None:
    assert cli("key", "create", "cli-rule").code == exits.OK
    days = cli("key", "delete", "cli-rule", "--days", "0")
    assert days.code == exits.USAGE
    line = days.error_line()
    assert line.startswith("error: --days: "), line
    assert "waiting_period_days" not in line
    # Disabled stops use, not management: rotate and config still work.
    assert cli("key", "config", "cli-rule", "--disable").code == exits.OK
    assert cli("key", "rotate", "cli-rule").code == exits.OK, "a disabled key rotates"
    # Scheduled for deletion freezes the key, and the message says how to unfreeze it.
    assert cli("key", "delete", "cli-rule").code == exits.OK
    for change in (("rotate", "cli-rule"), ("config", "cli-rule", "--enable")):
        frozen = cli("key", *change)
        assert frozen.code == exits.SERVER
        assert "enclave-kms key restore cli-rule" in frozen.error_line()
    assert cli("key", "restore", "cli-rule").code == exits.OK
    assert cli("key", "rotate", "cli-rule").code == exits.OK


def _other_certificate_pem() -> str:
    """A certificate for another TLS key than the server's (what a restarted server has)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_commands_after_the_first_reuse_its_attestation_until_the_key_changes(
    cli: Runner, real_env: RealKMS, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attest once per TLS key (DESIGN §9): the first command appraises and pins; the next
    ones (new clients, as new processes would be) send their request over the pin with no
    appraisal; a server presenting another key is appraised afresh and re-pinned."""
    from enclave_kms.client import attest

    appraisals: list[str] = []
    fetched: list[str] = []
    real_finish = attest.finish

    def counting_finish(*args: object, **kwargs: object) -> attest.AttestedServer:
        appraisals.append("finish")
        return real_finish(*args, **kwargs)  # type: ignore[arg-type]

    real_begin = attest.begin

    def counting_begin(*args: object, **kwargs: object) -> attest.PendingAttestation:
        fetched.append("begin")  # one per GET /v1/attestation the client makes
        return real_begin(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(attest, "finish", counting_finish)
    monkeypatch.setattr(attest, "begin", counting_begin)
    assert cli("key", "create", "cli-pinned").code == exits.OK
    assert len(appraisals) == 1
    pins = list((isolated.parent / "attested").glob("*.json"))
    assert len(pins) == 1
    assert stat.S_IMODE(pins[0].stat().st_mode) == 0o600
    pinned = json.loads(pins[0].read_text())
    for args in (("key", "show", "cli-pinned"), ("random", "8", "--hex"), ("key", "list")):
        r = cli(*args)
        assert r.code == exits.OK, r.err
    assert (len(appraisals), len(fetched)) == (1, 1)  # no appraisal, no evidence fetched

    # The pin names another key than the server now presents: a fresh appraisal, re-pinned.
    pins[0].write_text(json.dumps({**pinned, "certificate_pem": _other_certificate_pem()}))
    assert cli("key", "show", "cli-pinned").code == exits.OK
    assert len(appraisals) == 2
    assert json.loads(pins[0].read_text())["certificate_pem"] == pinned["certificate_pem"]

    # Other trust settings (a policy that also accepts another MRENCLAVE) never reuse a pin.
    wider = isolated.parent / "wider.toml"
    policy = real_env.policy
    wider.write_text(
        Policy(
            **{**policy.__dict__, "mr_enclave": (*policy.mr_enclave, OTHER_MR_ENCLAVE)}
        ).to_toml()
    )
    monkeypatch.setenv("ENCLAVE_KMS_POLICY", str(wider))
    assert cli("key", "show", "cli-pinned").code == exits.OK
    assert len(appraisals) == 3


def test_a_command_over_a_pin_imports_nothing_of_the_appraisal(
    cli: Runner, real_env: RealKMS
) -> None:
    """A new process whose server is pinned sends its request without appraising, so it does
    not even import the verifier, the evidence parsers or the other command groups (their
    imports were most of a command's time after `init`, issue 12)."""
    from tests.test_import_rules import cli_modules, heavy

    assert cli("key", "create", "cli-lean").code == exits.OK  # appraises and pins
    code, out, loaded = cli_modules("key", "list")  # the environment names the server
    assert code == exits.OK
    assert "cli-lean" in out
    assert "enclave_kms.client.pins" in loaded
    assert heavy(loaded) == []


def test_key_list_reports_failed_records_of_every_page(
    cli: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`key list` pages through the listing and names every record that failed
    authentication, on whichever page the server reports it (it used to ask the first 1,000
    names only, so a record the host altered further down vanished from the table silently)."""
    from enclave_kms.cli import config, keys
    from enclave_kms.wire import KeyInfo, KeyPage, decode

    def info(name: str) -> KeyInfo:
        created = "2026-12-03T00:00:00Z"
        version = {"version": 1, "created": created, "public_key_pem": None, "imported": False}
        doc = {
            "name": name,
            "type": "aes256-gcm",
            "created": created,
            "latest_version": 1,
            "min_decryption_version": 1,
            "enabled": True,
            "exportable": False,
            "deletion_scheduled_at": None,
            "operations": ["encrypt", "decrypt"],
            "public_key_pem": None,
            "versions": [version],
        }
        return decode(KeyInfo, doc)

    pages = {
        "": KeyPage((info("a-1"), info("a-2")), "a-2", ("a-0-altered",)),
        "a-2": KeyPage((info("b-1"),), "b-1", ()),
        "b-1": KeyPage((info("c-1"),), None, ("c-0-altered",)),
    }
    asked: list[tuple[str, int]] = []

    class Listing:
        def __enter__(self) -> Listing:
            return self

        def __exit__(self, *_: object) -> None:
            return None

        def list_keys(self, *, after: str = "", limit: int = 100) -> KeyPage:
            asked.append((after, limit))
            return pages[after]

    monkeypatch.setattr(config.Settings, "client", lambda self, **_: Listing())
    r = cli("key", "list")
    assert r.code == exits.OK, r.err
    assert asked == [("", keys.LIST_PAGE), ("a-2", keys.LIST_PAGE), ("b-1", keys.LIST_PAGE)]
    for name in ("a-1", "a-2", "b-1", "c-1"):
        assert name in r.out
    assert "4 key(s)" in r.out
    assert "a-0-altered" in r.err
    assert "c-0-altered" in r.err
