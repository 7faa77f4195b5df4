"""Client configuration for the CLI, and `enclave-kms config show|path`.

Every setting is looked up in this order, first found wins:

1. the flag, given before the command (`enclave-kms --url URL key list`): `--url`,
   `--token-file`, `--policy`, `--trust-root`, `--pccs` (and a command's URL argument);
2. the environment: `ENCLAVE_KMS_URL`, `ENCLAVE_KMS_TOKEN` (the token itself),
   `ENCLAVE_KMS_TOKEN_FILE`, `ENCLAVE_KMS_POLICY`, `ENCLAVE_KMS_TRUST_ROOT`, `ENCLAVE_KMS_PCCS`;
3. the config file: `$ENCLAVE_KMS_CONFIG`, else `$XDG_CONFIG_HOME/enclave-kms/config.toml`,
   else `~/.config/enclave-kms/config.toml` (TOML keys `url`, `token_file`, `policy`,
   `trust_root`, `pccs`, `timeout`; relative paths are relative to the file);
4. defaults: the token file `token` beside the config file, the strict default policy and
   Intel's root of trust.

Secrets: a token is read from a file that only its owner may read (mode 0600, like ssh keys)
or from the environment; it is never accepted as a flag, because flags show in `ps`.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from enclave_kms.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from enclave_kms.attestation.policy import Policy
    from enclave_kms.attestation.types import TrustRoot
    from enclave_kms.client.sync import KMSClient

app = typer.Typer(no_args_is_help=True)

ENV_URL = "ENCLAVE_KMS_URL"
ENV_TOKEN = "ENCLAVE_KMS_TOKEN"  # noqa: S105 - the name of a variable, not a secret
ENV_TOKEN_FILE = "ENCLAVE_KMS_TOKEN_FILE"  # noqa: S105
ENV_POLICY = "ENCLAVE_KMS_POLICY"
ENV_TRUST_ROOT = "ENCLAVE_KMS_TRUST_ROOT"
ENV_PCCS = "ENCLAVE_KMS_PCCS"
ENV_CONFIG = "ENCLAVE_KMS_CONFIG"
CONNECTION_FLAGS = ("--url", "--token-file", "--policy", "--trust-root", "--pccs")
_FILE_KEYS = ("url", "token_file", "policy", "trust_root", "pccs", "timeout")

UrlOpt = Annotated[
    str | None, typer.Option("--url", help=f"Server URL, https://HOST:PORT (env {ENV_URL}).")
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option("--token-file", help=f"File holding the bearer token (env {ENV_TOKEN_FILE})."),
]
PolicyOpt = Annotated[
    Path | None,
    typer.Option("--policy", help=f"Attestation policy TOML (env {ENV_POLICY})."),
]
TrustRootOpt = Annotated[
    Path | None,
    typer.Option(
        "--trust-root",
        help=f"Root CA PEM to trust instead of Intel's, e.g. a simulated root "
        f"(env {ENV_TRUST_ROOT}).",
    ),
]
PccsOpt = Annotated[
    str | None,
    typer.Option("--pccs", help=f"Fetch collateral from this PCCS/PCS URL (env {ENV_PCCS})."),
]


def config_path() -> Path:
    explicit = os.environ.get(ENV_CONFIG)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "enclave-kms" / "config.toml"


def default_token_file() -> Path:
    return config_path().parent / "token"


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: invalid TOML ({exc})") from None
    unknown = sorted(set(doc) - set(_FILE_KEYS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r}")
    for key, value in doc.items():
        if key == "timeout":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"config file {path}: timeout must be a positive number")
        elif not isinstance(value, str):
            raise ConfigError(f"config file {path}: {key} must be a string")
    return doc


def write_config_file(values: Mapping[str, str], path: Path | None = None) -> Path:
    """Merge `values` into the config file (mode 0600, directory 0700)."""
    import tomli_w

    path = path or config_path()
    doc = {**read_config_file(path), **values}
    ordered = {key: doc[key] for key in _FILE_KEYS if key in doc}
    write_private(path, tomli_w.dumps(ordered).encode("utf-8"))
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (0600), replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_token_file(path: Path) -> str:
    try:
        info = path.stat()
        data = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"token file {path} does not exist (run `enclave-kms init`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read token file {path}: {type(exc).__name__}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"token file {path} is accessible by other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
        )
    token = data.strip()
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


@dataclass(frozen=True)
class Settings:
    """Resolved client settings; `sources` says where each came from (for `config show`)."""

    url: str | None
    token_file: Path
    policy: Path | None
    trust_root: Path | None
    pccs: str | None
    timeout: float
    token_env: str | None = field(default=None, repr=False)
    sources: Mapping[str, str] = field(default_factory=dict)

    def token(self) -> str | None:
        """The bearer token (environment first, then the token file if it exists)."""
        if self.token_env:
            return self.token_env
        if self.token_file.exists():
            return read_token_file(self.token_file)
        return None

    def require_url(self) -> str:
        if not self.url:
            raise UsageError(
                f"no server URL: pass --url, set {ENV_URL}, or run `enclave-kms init URL`"
            )
        return self.url

    def load_policy(self) -> Policy:
        from enclave_kms.attestation.policy import DEFAULT_POLICY, Policy

        if self.policy is None:
            return DEFAULT_POLICY
        return Policy.from_toml(_read(self.policy, "policy"))

    def load_trust_root(self) -> TrustRoot | None:
        from enclave_kms.attestation.types import TrustRoot

        if self.trust_root is None:
            return None
        return TrustRoot.from_pem(_read(self.trust_root, "trust root"))

    def client(self, *, with_token: bool = True) -> KMSClient:
        from enclave_kms.client.pins import PinStore
        from enclave_kms.client.sync import KMSClient

        source = None
        if self.pccs:  # the collateral fetcher only when asked for (start-up cost)
            from enclave_kms.attestation.sources import PccsClient

            source = PccsClient(self.pccs)
        return KMSClient(
            self.require_url(),
            token=self.token() if with_token else None,
            policy=self.load_policy(),
            trust_root=self.load_trust_root(),
            collateral_source=source,
            timeout=self.timeout,
            pins=PinStore(config_path().parent / "attested"),  # attest once per TLS key
        )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None


def resolve(
    *,
    url: str | None = None,
    token_file: Path | None = None,
    policy: Path | None = None,
    trust_root: Path | None = None,
    pccs: str | None = None,
) -> Settings:
    """Flags, then environment, then the config file, then defaults."""
    file_path = config_path()
    doc = read_config_file(file_path)
    sources: dict[str, str] = {}

    def pick(name: str, flag: Any, env: str) -> Any:
        if flag is not None:
            sources[name] = "flag"
            return flag
        if os.environ.get(env):
            sources[name] = f"env {env}"
            return os.environ[env]
        if name in doc:
            sources[name] = "config file"
            value = doc[name]
            if name in ("policy", "trust_root", "token_file"):
                candidate = Path(value).expanduser()
                return candidate if candidate.is_absolute() else file_path.parent / candidate
            return value
        return None

    chosen_url = pick("url", url, ENV_URL)
    chosen_policy = pick("policy", policy, ENV_POLICY)
    chosen_root = pick("trust_root", trust_root, ENV_TRUST_ROOT)
    chosen_pccs = pick("pccs", pccs, ENV_PCCS)
    token_env = None
    if token_file is None and os.environ.get(ENV_TOKEN):
        token_env = os.environ[ENV_TOKEN]
        sources["token"] = f"env {ENV_TOKEN}"
    chosen_token_file = pick("token_file", token_file, ENV_TOKEN_FILE)
    if chosen_token_file is None:
        chosen_token_file = default_token_file()
        sources["token_file"] = "default"  # noqa: S105 - a label, not a secret
    if "token" not in sources:
        sources["token"] = f"token file ({sources['token_file']})"
    timeout = float(doc.get("timeout", 30.0))
    return Settings(
        url=str(chosen_url) if chosen_url else None,
        token_file=Path(chosen_token_file),
        policy=Path(chosen_policy) if chosen_policy else None,
        trust_root=Path(chosen_root) if chosen_root else None,
        pccs=str(chosen_pccs) if chosen_pccs else None,
        timeout=timeout,
        token_env=token_env,
        sources=sources,
    )


@dataclass(frozen=True)
class Connection:
    """The connection flags as given once, before the command (`enclave-kms --url U key
    list`); the root callback stores them in the typer context for every command."""

    url: str | None = None
    token_file: Path | None = None
    policy: Path | None = None
    trust_root: Path | None = None
    pccs: str | None = None


def connection(ctx: typer.Context, *, url: str | None = None) -> Settings:
    """The settings a client command uses: the root's flags (a command's own URL argument
    first), then environment, config file and defaults (see `resolve`)."""
    flags = ctx.find_object(Connection) or Connection()
    return resolve(
        url=url if url is not None else flags.url,
        token_file=flags.token_file,
        policy=flags.policy,
        trust_root=flags.trust_root,
        pccs=flags.pccs,
    )


# --------------------------------------------------------------------------- commands


@app.command("show")
def show_cmd(ctx: typer.Context) -> None:
    """Show the settings a command would use, and where each comes from (never the token)."""
    from rich.console import Console
    from rich.table import Table

    s = connection(ctx)
    table = Table(title=f"config file: {config_path()}", title_justify="left")
    table.add_column("setting", style="bold")
    table.add_column("value", overflow="fold")
    table.add_column("from")
    has_token = s.token_env is not None or s.token_file.exists()
    rows = (
        ("url", s.url or "-", s.sources.get("url", "unset")),
        ("policy", str(s.policy) if s.policy else "built-in default (strict)", _src(s, "policy")),
        (
            "trust_root",
            str(s.trust_root) if s.trust_root else "Intel SGX Root CA",
            _src(s, "trust_root"),
        ),
        ("pccs", s.pccs or "collateral from the server", _src(s, "pccs")),
        ("token_file", str(s.token_file), s.sources.get("token_file", "default")),
        ("token", "present" if has_token else "none", s.sources.get("token", "-")),
        (
            "timeout",
            f"{s.timeout:g} s",
            "config file" if "timeout" in read_config_file() else "default",
        ),
    )
    for row in rows:
        table.add_row(*row)
    Console(highlight=False).print(table)


def _src(s: Settings, name: str) -> str:
    return s.sources.get(name, "default")


@app.command("path")
def path_cmd() -> None:
    """Print the config file's path."""
    typer.echo(str(config_path()))


# --------------------------------------------------------------------------- shared helpers


def command_app() -> typer.Typer:
    """A Typer for a top-level *command* (`enclave-kms encrypt KEY …`) registered in
    `groups.py` like a group: its callback is the command, options may follow arguments."""
    return typer.Typer(
        subcommand_metavar="",
        context_settings={"allow_interspersed_args": True},
    )


PIPE_WIDTH = 120
"""Rich assumes 80 columns when output is not a terminal; tables of 64-digit hashes then wrap
mid-value, which is hard to read in logs and impossible to grep."""


def _width(stream: Any) -> int | None:
    isatty = getattr(stream, "isatty", None)
    if os.environ.get("COLUMNS") or (callable(isatty) and isatty()):
        return None  # rich measures the terminal, or honours COLUMNS
    return PIPE_WIDTH


def stderr_console() -> Any:
    import sys

    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))


def stdout_console() -> Any:
    import sys

    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
