"""A simulated SGX platform on disk, and the enclave-facing backend it provides.

A platform directory (mode 0700, every file 0600, owned by the user) holds what a real SGX
machine keeps in fuses and in Intel's hands: the fuse secret, the PCK key and its PKI, the QE
attestation key, and `platform.toml` (FMSPC, CPUSVN, PCESVN, the TCB scenario switch, the QE and
PCE identities). Anyone who can read the directory can forge this platform's quotes and unseal
its data, so `open` refuses a directory or file that group or others can access, or that another
user owns — the same rule ssh applies to private keys.

Simulation protects nothing (DESIGN §2): it exists so the production code paths run unchanged on
machines without SGX, and its root never verifies without being named explicitly.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_kms.attestation.types import Collateral, TrustRoot
from enclave_kms.errors import (
    FormatError,
    KeyDerivationError,
    PlatformError,
    PlatformPermissionError,
)
from enclave_kms.platform.base import EnclaveIdentity, KeyPolicy, seal_key_changed
from enclave_kms.platform.sim import sealing
from enclave_kms.platform.sim.cpu import (
    CPU_SVN_SIZE,
    FUSE_SECRET_SIZE,
    KeyName,
    KeyRequest,
    SimCpu,
)
from enclave_kms.platform.sim.pcs import (
    DEFAULT_VALIDITY,
    PlatformTcb,
    SimPcs,
    TcbScenario,
)
from enclave_kms.platform.sim.pki import SimPki
from enclave_kms.platform.sim.qe import ProvisioningCertificationEnclave, QuotingEnclave
from enclave_kms.platform.sim.tdx import (
    TdIdentity,
    TdQuotingEnclave,
    TdxModule,
    td_qe_identity,
    tdx_collateral,
)
from enclave_kms.sgx.pck import SGX_TYPE_SCALABLE, PckConfiguration, PckExtension
from enclave_kms.sgx.report import AttributeFlags, Attributes, Report, TargetInfo

ENV_DIR = "ENCLAVE_KMS_PLATFORM_DIR"
CONFIG_FILE = "platform.toml"
FUSE_FILE = "fuse_secret"
ATTESTATION_KEY_FILE = "qe_attestation.key.pem"
FORMAT_VERSION = 1

DEFAULT_FMSPC = bytes.fromhex("00F0C5000000")
DEFAULT_PCE_ID = bytes(2)
DEFAULT_CPU_SVN = bytes([14, 14, 3, 3, 255, 255, 1, 0]) + bytes(8)
DEFAULT_PCE_SVN = 13
QE_ISV_PROD_ID = 1
QE_ISV_SVN = 8
PCE_ISV_PROD_ID = 0
# QE3: INIT | MODE64BIT | PROVISIONKEY, never DEBUG; XFRM x87|SSE (ignored by the identity mask).
QE_ATTRIBUTES = Attributes(
    AttributeFlags.INIT | AttributeFlags.MODE64BIT | AttributeFlags.PROVISIONKEY, 0x3
)


def default_platform_dir() -> Path:
    """$ENCLAVE_KMS_PLATFORM_DIR, else ~/.local/share/enclave-kms/platform."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "enclave-kms" / "platform"


class SealRule(StrEnum):
    """Which seal keys an enclave may request (the header of every sealed blob records the
    CPUSVN and ISVSVN it was sealed under).

    sgx:     SGX's own rule: any ISVSVN/CPUSVN not above the current ones (upgrades keep access).
    gramine: Gramine's: the current CPUSVN and ISVSVN only, as `/dev/attestation/keys` derives
             them, so an enclave upgrade or a microcode/TCB-recovery update cannot unseal
             older blobs (docs/sgx-hardware.md: migrating the storage root key)."""

    SGX = "sgx"
    GRAMINE = "gramine"

    @classmethod
    def parse(cls, value: str) -> SealRule:
        try:
            return cls(value)
        except ValueError:
            raise PlatformError(f"seal rule {value[:20]!r}: expected sgx or gramine") from None


@dataclass(frozen=True)
class PlatformConfig:
    """The public state of a platform (`platform.toml`)."""

    created: datetime
    fmspc: bytes
    pce_id: bytes
    cpu_svn: bytes
    pce_svn: int
    tcb_scenario: TcbScenario
    qe_id: bytes
    ppid: bytes
    platform_instance_id: bytes
    qe_mr_enclave: bytes
    qe_mr_signer: bytes
    pce_mr_enclave: bytes
    pce_mr_signer: bytes
    seal_rule: SealRule = SealRule.SGX

    @property
    def tcb(self) -> PlatformTcb:
        return PlatformTcb(self.fmspc, self.pce_id, self.cpu_svn, self.pce_svn)

    @property
    def qe_identity(self) -> EnclaveIdentity:
        return EnclaveIdentity(
            self.qe_mr_enclave, self.qe_mr_signer, QE_ISV_PROD_ID, QE_ISV_SVN, QE_ATTRIBUTES
        )

    @property
    def pce_identity(self) -> EnclaveIdentity:
        return EnclaveIdentity(
            self.pce_mr_enclave, self.pce_mr_signer, PCE_ISV_PROD_ID, self.pce_svn, QE_ATTRIBUTES
        )

    def pck_extension(self) -> PckExtension:
        return PckExtension(
            ppid=self.ppid,
            tcb_components=tuple(self.cpu_svn),
            pce_svn=self.pce_svn,
            cpu_svn=self.cpu_svn,
            pce_id=self.pce_id,
            fmspc=self.fmspc,
            sgx_type=SGX_TYPE_SCALABLE,
            platform_instance_id=self.platform_instance_id,
            configuration=PckConfiguration(
                dynamic_platform=True, cached_keys=False, smt_enabled=True
            ),
        )

    def to_toml(self) -> bytes:
        created = self.created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines = [
            "# enclave-kms SIMULATED SGX platform: not a TEE, protects nothing.",
            f"format = {FORMAT_VERSION}",
            f'created = "{created}"',
            f'fmspc = "{self.fmspc.hex().upper()}"',
            f'pce_id = "{self.pce_id.hex().upper()}"',
            f'cpu_svn = "{self.cpu_svn.hex()}"',
            f"pce_svn = {self.pce_svn}",
            f'tcb_scenario = "{self.tcb_scenario.value}"',
            f'qe_id = "{self.qe_id.hex()}"',
            f'ppid = "{self.ppid.hex()}"',
            f'platform_instance_id = "{self.platform_instance_id.hex()}"',
            f'seal_rule = "{self.seal_rule.value}"',
            "",
            "[qe]",
            f'mr_enclave = "{self.qe_mr_enclave.hex()}"',
            f'mr_signer = "{self.qe_mr_signer.hex()}"',
            "",
            "[pce]",
            f'mr_enclave = "{self.pce_mr_enclave.hex()}"',
            f'mr_signer = "{self.pce_mr_signer.hex()}"',
            "",
        ]
        return "\n".join(lines).encode("utf-8")

    @classmethod
    def from_toml(cls, data: bytes) -> PlatformConfig:
        try:
            doc = tomllib.loads(data.decode("utf-8"))
            if doc.get("format") != FORMAT_VERSION:
                raise PlatformError(f"{CONFIG_FILE}: unsupported format {doc.get('format')!r}")

            def hexfield(table: dict[str, object], key: str, size: int) -> bytes:
                value = bytes.fromhex(str(table[key]))
                if len(value) != size:
                    raise PlatformError(f"{CONFIG_FILE}: {key} must be {size} bytes")
                return value

            pce_svn = doc["pce_svn"]
            if not isinstance(pce_svn, int) or not 0 <= pce_svn < 1 << 16:
                raise PlatformError(f"{CONFIG_FILE}: pce_svn must be 0..65535")
            return cls(
                created=datetime.strptime(str(doc["created"]), "%Y-%m-%dT%H:%M:%SZ").replace(
                    tzinfo=UTC
                ),
                fmspc=hexfield(doc, "fmspc", 6),
                pce_id=hexfield(doc, "pce_id", 2),
                cpu_svn=hexfield(doc, "cpu_svn", CPU_SVN_SIZE),
                pce_svn=pce_svn,
                tcb_scenario=TcbScenario.parse(str(doc["tcb_scenario"])),
                qe_id=hexfield(doc, "qe_id", 16),
                ppid=hexfield(doc, "ppid", 16),
                platform_instance_id=hexfield(doc, "platform_instance_id", 16),
                qe_mr_enclave=hexfield(doc["qe"], "mr_enclave", 32),
                qe_mr_signer=hexfield(doc["qe"], "mr_signer", 32),
                pce_mr_enclave=hexfield(doc["pce"], "mr_enclave", 32),
                pce_mr_signer=hexfield(doc["pce"], "mr_signer", 32),
                seal_rule=SealRule.parse(str(doc.get("seal_rule", SealRule.SGX.value))),
            )
        except PlatformError:
            raise
        except (tomllib.TOMLDecodeError, UnicodeError, KeyError, TypeError, ValueError) as exc:
            raise PlatformError(f"{CONFIG_FILE}: unreadable ({type(exc).__name__})") from None


# --------------------------------------------------------------------------- files


def _check_private(path: Path, *, directory: bool) -> os.stat_result:
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise PlatformError(f"simulated platform: {path} is missing") from None
    kind_ok = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    if not kind_ok:
        kind = "directory" if directory else "regular file"
        raise PlatformPermissionError(f"{path}: not a {kind} (symlinks are refused)")
    if st.st_mode & 0o077:
        raise PlatformPermissionError(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets group/others in; "
            f"expected {'0700' if directory else '0600'}"
        )
    if st.st_uid != os.getuid():
        raise PlatformPermissionError(f"{path}: owned by uid {st.st_uid}, not by this user")
    return st


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 (never through an existing file or symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    _write_private(tmp, data)
    tmp.replace(path)


def _read_private(directory: Path, name: str) -> bytes:
    path = directory / name
    _check_private(path, directory=False)
    return path.read_bytes()


# --------------------------------------------------------------------------- platform


class SimPlatform:
    """An opened simulated platform: CPU, PCE, QE, PKI and PCS, all from one directory."""

    def __init__(
        self,
        path: Path,
        config: PlatformConfig,
        fuse_secret: bytes,
        pki: SimPki,
        attestation_key: ec.EllipticCurvePrivateKey,
    ) -> None:
        self.path = path
        self.config = config
        self.pki = pki
        self.cpu = SimCpu(fuse_secret, config.cpu_svn)
        self.pce = ProvisioningCertificationEnclave(self.cpu, config.pce_identity, pki.pck_key)
        self.qe = QuotingEnclave(
            self.cpu,
            config.qe_identity,
            attestation_key,
            self.pce,
            pki.pck_chain_pem(),
            pce_svn=config.pce_svn,
            qe_id=config.qe_id,
        )
        self.tdx_module = TdxModule.for_vendor(config.qe_mr_enclave)
        self.td_qe = TdQuotingEnclave(
            self.cpu,
            td_qe_identity(config.qe_identity),
            attestation_key,
            self.pce,
            pki.pck_chain_pem(),
            module=self.tdx_module,
            pce_svn=config.pce_svn,
            qe_id=config.qe_id,
        )

    @staticmethod
    def file_names() -> tuple[str, ...]:
        return (CONFIG_FILE, FUSE_FILE, ATTESTATION_KEY_FILE, *SimPki.file_names())

    @classmethod
    def init(
        cls,
        path: Path | str,
        *,
        now: datetime | None = None,
        fmspc: bytes = DEFAULT_FMSPC,
        cpu_svn: bytes = DEFAULT_CPU_SVN,
        pce_svn: int = DEFAULT_PCE_SVN,
        scenario: TcbScenario = TcbScenario.UP_TO_DATE,
        root_from: SimPlatform | None = None,
        seal_rule: SealRule = SealRule.SGX,
    ) -> SimPlatform:
        """Create a new platform in `path` (which must not exist or be empty).

        `root_from`: another simulated CPU of the same simulated vendor. The new one gets its
        own fuse secret, PCK key and certificate, attestation key, PPID and QE id, but shares
        the root, platform CA, TCB signing key, FMSPC and the quoting/provisioning enclaves'
        identities, as real CPUs of one model share Intel's: a policy naming that root trusts
        both, and the collateral of one serves the other."""
        path = Path(path)
        created = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        vendor = root_from.config if root_from is not None else None
        config = PlatformConfig(
            created=created,
            fmspc=vendor.fmspc if vendor is not None else fmspc,
            pce_id=DEFAULT_PCE_ID,
            cpu_svn=cpu_svn,
            pce_svn=pce_svn,
            tcb_scenario=vendor.tcb_scenario if vendor is not None else scenario,
            qe_id=os.urandom(16),
            ppid=os.urandom(16),
            platform_instance_id=os.urandom(16),
            qe_mr_enclave=vendor.qe_mr_enclave if vendor is not None else os.urandom(32),
            qe_mr_signer=vendor.qe_mr_signer if vendor is not None else os.urandom(32),
            pce_mr_enclave=vendor.pce_mr_enclave if vendor is not None else os.urandom(32),
            pce_mr_signer=vendor.pce_mr_signer if vendor is not None else os.urandom(32),
            seal_rule=seal_rule,
        )
        try:
            shared = root_from.pki if root_from is not None else None
            pki = SimPki.generate(config.pck_extension(), created, shared=shared)
        except FormatError as exc:
            raise PlatformError(f"platform init: {exc.message}") from None
        attestation_key = ec.generate_private_key(ec.SECP256R1())
        fuse_secret = os.urandom(FUSE_SECRET_SIZE)

        if path.exists() or path.is_symlink():
            if not path.is_dir() or path.is_symlink():
                raise PlatformError(f"platform init: {path} exists and is not a directory")
            if any(path.iterdir()):
                raise PlatformError(f"platform init: {path} is not empty (already initialised?)")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir(mode=0o700)
        path.chmod(0o700)
        files = dict(pki.to_files())
        files[FUSE_FILE] = fuse_secret
        files[ATTESTATION_KEY_FILE] = attestation_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for name, data in files.items():
            _write_private(path / name, data)
        # Written last: its presence is what marks the platform as initialised.
        _write_private(path / CONFIG_FILE, config.to_toml())
        return cls(path, config, fuse_secret, pki, attestation_key)

    @classmethod
    def open(cls, path: Path | str) -> SimPlatform:
        """Open an initialised platform, refusing loose permissions or foreign ownership."""
        path = Path(path)
        if not path.exists():
            raise PlatformError(
                f"no simulated platform at {path} (run `enclave-kms platform init`)"
            )
        _check_private(path, directory=True)
        if not (path / CONFIG_FILE).exists():
            raise PlatformError(
                f"{path} is not an initialised platform (run `enclave-kms platform init`)"
            )
        for name in cls.file_names():
            _check_private(path / name, directory=False)
        config = PlatformConfig.from_toml(_read_private(path, CONFIG_FILE))
        fuse_secret = _read_private(path, FUSE_FILE)
        if len(fuse_secret) != FUSE_SECRET_SIZE:
            raise PlatformError(f"{FUSE_FILE}: expected {FUSE_SECRET_SIZE} bytes")
        pki = SimPki.from_files({n: _read_private(path, n) for n in SimPki.file_names()})
        try:
            key = serialization.load_pem_private_key(
                _read_private(path, ATTESTATION_KEY_FILE), None
            )
        except (ValueError, TypeError):
            raise PlatformError(f"{ATTESTATION_KEY_FILE}: unreadable") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PlatformError(f"{ATTESTATION_KEY_FILE}: not an EC key")
        return cls(path, config, fuse_secret, pki, key)

    # ------------------------------------------------------------------ state

    def set_tcb_scenario(self, scenario: TcbScenario) -> None:
        """Flip the TCB switch; collateral issued from now on reflects it."""
        self.config = replace(self.config, tcb_scenario=scenario)
        _replace_private(self.path / CONFIG_FILE, self.config.to_toml())

    def set_seal_rule(self, rule: SealRule) -> None:
        """Choose SGX's or Gramine's seal-key rule for enclaves started from now on."""
        self.config = replace(self.config, seal_rule=rule)
        _replace_private(self.path / CONFIG_FILE, self.config.to_toml())

    def set_cpu_svn(self, cpu_svn: bytes) -> None:
        """A microcode or TCB-recovery update: a new CPUSVN and, as Intel does after one, a
        new PCK certificate (same PCK key) carrying the new TCB. Enclaves started from now on
        run at it; seal keys change with it (under the gramine rule, old blobs stop opening)."""
        if len(cpu_svn) != CPU_SVN_SIZE:
            raise PlatformError(f"cpu_svn: expected {CPU_SVN_SIZE} bytes")
        config = replace(self.config, cpu_svn=bytes(cpu_svn))
        pki = self.pki.reissue_pck(config.pck_extension(), datetime.now(UTC))
        for name, data in pki.to_files().items():
            if name.startswith("pck."):
                _replace_private(self.path / name, data)
        _replace_private(self.path / CONFIG_FILE, config.to_toml())
        self.config, self.pki = config, pki

    # ------------------------------------------------------------------ verifier side

    def root_pem(self) -> bytes:
        return self.pki.root_pem()

    def trust_root(self) -> TrustRoot:
        """This installation's simulated root, to be named explicitly by a verifier's policy."""
        return TrustRoot(self.pki.root_cert)

    def pcs(
        self, *, validity: timedelta = DEFAULT_VALIDITY, revoke_pck: bool | None = None
    ) -> SimPcs:
        return SimPcs(
            self.pki,
            self.config.tcb,
            self.config.qe_identity,
            scenario=self.config.tcb_scenario,
            revoke_pck=revoke_pck,
            validity=validity,
        )

    def collateral(self, now: datetime, *, validity: timedelta = DEFAULT_VALIDITY) -> Collateral:
        """TCB Info, QE Identity and CRLs issued at `now`, valid for `validity`."""
        return self.pcs(validity=validity).collateral(now)

    def tdx_collateral(
        self, now: datetime, *, validity: timedelta = DEFAULT_VALIDITY
    ) -> Collateral:
        """TDX TCB Info, TD_QE identity and CRLs issued at `now`: for TD quotes."""
        return tdx_collateral(
            self.pcs(validity=validity), self.td_qe.identity, self.tdx_module, now
        )

    def td_quote(self, td: TdIdentity, report_data: bytes) -> bytes:
        """The DCAP quote v4 a TD running as `td` gets for `report_data` on this CPU."""
        return self.td_qe.quote_td(*self.td_qe.td_report(td, report_data))

    # ------------------------------------------------------------------ enclave side

    def enclave(self, identity: EnclaveIdentity) -> SimEnclave:
        """The TEE backend for an enclave running as `identity` (from a verified image)."""
        return SimEnclave(self, identity)

    def quote(self, identity: EnclaveIdentity, report_data: bytes) -> bytes:
        """Shortcut: the quote `identity` would get for `report_data`."""
        return self.enclave(identity).get_quote(report_data)


class SimEnclave:
    """`TeeBackend` for one enclave identity on a simulated platform."""

    def __init__(self, platform: SimPlatform, identity: EnclaveIdentity) -> None:
        self._cpu = platform.cpu
        self._qe = platform.qe
        self._identity = identity
        self._gramine_rule = platform.config.seal_rule is SealRule.GRAMINE

    @property
    def identity(self) -> EnclaveIdentity:
        return self._identity

    def get_report(self, target: TargetInfo | None, report_data: bytes) -> Report:
        if target is None:
            target = self._qe.target_info()
        return self._cpu.ereport(self._identity, target, report_data)

    def verify_report(self, report: Report) -> None:
        """Local attestation: check a report another enclave targeted at this one."""
        self._cpu.verify_report(self._identity, report)

    def get_quote(self, report_data: bytes) -> bytes:
        return self._qe.quote(self.get_report(None, report_data))

    def get_seal_key(self, policy: KeyPolicy, key_id: bytes, isv_svn: int) -> bytes:
        if self._gramine_rule and isv_svn != self._identity.isv_svn:
            raise KeyDerivationError("Gramine derives seal keys for the enclave's own ISVSVN only")
        request = KeyRequest(
            KeyName.SEAL,
            key_policy=policy,
            isv_svn=isv_svn,
            cpu_svn=self._cpu.cpu_svn,
            key_id=key_id,
        )
        return self._cpu.egetkey(self._identity, request)

    def seal(self, data: bytes, policy: KeyPolicy, aad: bytes = b"") -> bytes:
        return sealing.seal(self._cpu, self._identity, data, policy, aad)

    def unseal(self, blob: bytes, aad: bytes = b"") -> bytes:
        if self._gramine_rule:
            header = sealing.SealedHeader.parse(blob)
            seal_key_changed(
                (header.cpu_svn, header.isv_svn), (self._cpu.cpu_svn, self._identity.isv_svn)
            )
        return sealing.unseal(self._cpu, self._identity, blob, aad)
