"""People who decide conflicts and the modules each of them may decide: `accounts.yaml`.

The accounts live in a file of their own, not in the sync settings: the settings are frozen into every
replica at checkout, and password hashes and tokens must never travel to a laptop.

```yaml
accounts:
  - name: Ada Lovelace
    modules: [crm]                 # or ["*"] for every module
    password_hash: $argon2id$v=19$...
    tokens:                        # for automation; only hashes are stored
      - {id: 3f9c1a2b7d4e, hash: 9b1d..., created_at: "2026-03-02T10:00:00"}
```

Passwords are hashed with argon2 (slow on purpose: a stolen file must not give them away). API tokens
are 256-bit random secrets: no dictionary attack works on them, so a SHA-256 digest protects them
as well as argon2 would, and checking one costs microseconds on every automated request instead of
tens of milliseconds. A token carries its id (`spt_<id>_<secret>`), so it is found without trying
every stored hash.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sync_pipeline.engine.errors import BadInputError
from sync_pipeline.engine.settings import compose_yaml

ALL_MODULES = "*"
TOKEN_PREFIX = "spt"
MIN_PASSWORD_LENGTH = 8
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")

_hasher = PasswordHasher()


@cache
def _dummy_hash() -> str:
    """Verified when a name is unknown, so that a login takes as long for a wrong name as for a wrong
    password and does not tell which names exist. Made on first use: every CLI start imports this."""
    return _hasher.hash(secrets.token_hex(16))


class AccountsError(BadInputError):
    """The accounts file is missing or wrong: names the file, the line, the key and the fix."""

    def __init__(self, path: str, line: int | None, key: str, problem: str, fix: str) -> None:
        self.path, self.line, self.key = path, line, key
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key}: {problem}", fix)


class NotAllowedError(BadInputError):
    """A person tried to see or decide a conflict of a module they are not allowed for."""


class UnknownPersonError(BadInputError):
    """A name, password or token that matches no account."""


class ApiToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=8)
    hash: str = Field(min_length=64, max_length=64)  # SHA-256 hex of the secret part
    created_at: str


class Account(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)  # sync_decision.decided_by holds 200 characters
    modules: list[str] = Field(min_length=1)
    password_hash: str | None = None
    tokens: list[ApiToken] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name_is_trimmed(cls, value: str) -> str:
        if value != value.strip() or not value.strip():
            raise ValueError("a name may not be empty or start or end with spaces")
        return value

    @field_validator("modules")
    @classmethod
    def _modules_are_names(cls, value: list[str]) -> list[str]:
        for module in value:
            if module != ALL_MODULES and not _MODULE_NAME.match(module):
                raise ValueError(f"{module!r} is not a module name")
        return value

    @property
    def all_modules(self) -> bool:
        return ALL_MODULES in self.modules

    def may_decide(self, module: str) -> bool:
        return self.all_modules or module in self.modules

    def modules_text(self) -> str:
        return "every module" if self.all_modules else ", ".join(self.modules)

    def password_fingerprint(self) -> str:
        """Changes when the password changes: a login session made with the old password then ends."""
        return hashlib.sha256((self.password_hash or "").encode()).hexdigest()[:16]

    def check_allowed(self, module: str, what: str = "decide") -> None:
        if not self.may_decide(module):
            raise NotAllowedError(
                f"{self.name} may not {what} conflicts of module {module!r} (allowed: {self.modules_text()})",
                "ask an administrator to add the module to your account "
                f"(`sync-pipeline accounts modules --name NAME --modules {module},…`)",
            )


class AccountsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accounts: list[Account] = Field(default_factory=list)


def _line_of(node: yaml.Node | None, loc: Iterable[Any]) -> int | None:
    """The line of the deepest YAML node that a pydantic error location reaches."""
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if str(key_node.value) == str(part):
                    line = key_node.start_mark.line + 1
                    child = value_node
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def default_accounts_path() -> Path:
    """`$SYNC_ACCOUNTS`, else `$SYNC_HOME/accounts.yaml`."""
    from sync_pipeline.engine.master import sync_home

    configured = os.environ.get("SYNC_ACCOUNTS")
    return Path(configured).expanduser() if configured else sync_home() / "accounts.yaml"


def hash_token_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Accounts:
    """The accounts of one file; changes are written back with `save`."""

    def __init__(self, entries: list[Account] | None = None, path: Path | None = None) -> None:
        self.entries = list(entries or [])
        self.path = path

    # -- reading ----------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, source: str = "<accounts>") -> Accounts:
        root, data = compose_yaml(text, source, AccountsError)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise AccountsError(source, 1, "<root>", "the file must be a mapping", "start it with 'accounts:'")
        try:
            parsed = AccountsFile.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = first["loc"]
            key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
            if first["type"] == "extra_forbidden":
                problem, fix = f"unknown key '{loc[-1]}'", "remove it or check its spelling (see docs/review.md)"
            elif first["type"] == "missing":
                problem, fix = f"required key '{loc[-1]}' is missing", f"add '{loc[-1]}:' (see docs/review.md)"
            else:
                problem, fix = first["msg"], "correct the value, or recreate the entry with `sync-pipeline accounts`"
            raise AccountsError(source, _line_of(root, loc), key or "<root>", problem, fix) from None
        seen: set[str] = set()
        for index, account in enumerate(parsed.accounts):
            folded = account.name.casefold()
            if folded in seen:
                raise AccountsError(
                    source,
                    _line_of(root, ("accounts", index, "name")),
                    f"accounts[{index}].name",
                    f"the name {account.name!r} appears twice",
                    "names identify who decided: keep one entry per person",
                )
            seen.add(folded)
        return cls(parsed.accounts)

    @classmethod
    def load(cls, path: str | Path) -> Accounts:
        file = Path(path).expanduser()
        if not file.is_file():
            raise AccountsError(
                str(file),
                None,
                "<file>",
                "the accounts file does not exist",
                'create it with `sync-pipeline accounts add --name "Your Name" --modules crm`',
            )
        accounts = cls.parse(file.read_text(encoding="utf-8"), str(file))
        accounts.path = file
        return accounts

    @classmethod
    def load_or_empty(cls, path: str | Path) -> Accounts:
        file = Path(path).expanduser()
        return cls.load(file) if file.exists() else cls([], file)

    def get(self, name: str) -> Account | None:
        folded = name.strip().casefold()
        return next((a for a in self.entries if a.name.casefold() == folded), None)

    def require(self, name: str) -> Account:
        account = self.get(name)
        if account is None:
            known = ", ".join(a.name for a in self.entries) or "none yet"
            raise UnknownPersonError(
                f"no account named {name!r} in {self.path or 'the accounts file'} (accounts: {known})",
                'add it with `sync-pipeline accounts add --name "NAME" --modules MODULES`',
            )
        return account

    # -- authentication ---------------------------------------------------------------------------

    def authenticate_password(self, name: str, password: str) -> Account | None:
        account = self.get(name)
        real = account is not None and account.password_hash is not None
        stored = account.password_hash if real and account is not None else _dummy_hash()
        try:
            _hasher.verify(stored or "", password)
        except (VerificationError, InvalidHashError):
            return None
        return account if real else None

    def authenticate_token(self, token: str) -> Account | None:
        parts = token.strip().split("_", 2)
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            return None
        _prefix, token_id, secret = parts
        digest = hash_token_secret(secret)
        for account in self.entries:
            for stored in account.tokens:
                if stored.id == token_id and hmac.compare_digest(stored.hash, digest):
                    return account
        return None

    # -- changing ---------------------------------------------------------------------------------

    def add(self, name: str, modules: list[str], password: str | None) -> Account:
        if self.get(name) is not None:
            raise BadInputError(
                f"an account named {name!r} exists already",
                "change it with `sync-pipeline accounts password` / `accounts modules`, or pick another name",
            )
        try:
            account = Account(name=name, modules=modules, password_hash=_hash_password(password))
        except ValidationError as exc:
            raise BadInputError(f"account {name!r}: {exc.errors()[0]['msg']}", "check --name and --modules") from None
        self.entries.append(account)
        return account

    def set_password(self, name: str, password: str) -> None:
        self.require(name).password_hash = _hash_password(password)

    def set_modules(self, name: str, modules: list[str]) -> None:
        account = self.require(name)
        try:
            account.modules = Account(name=account.name, modules=modules).modules
        except ValidationError as exc:
            raise BadInputError(f"modules: {exc.errors()[0]['msg']}", "give module names, or * for all") from None

    def new_token(self, name: str, now: str) -> tuple[str, str]:
        """A new token for `name`: returns (token id, the token). Only its hash is stored."""
        account = self.require(name)
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        account.tokens.append(ApiToken(id=token_id, hash=hash_token_secret(secret), created_at=now))
        return token_id, f"{TOKEN_PREFIX}_{token_id}_{secret}"

    def revoke_token(self, name: str, token_id: str) -> None:
        account = self.require(name)
        kept = [t for t in account.tokens if t.id != token_id]
        if len(kept) == len(account.tokens):
            raise BadInputError(
                f"{account.name} has no token with id {token_id!r}",
                "list the token ids with `sync-pipeline accounts list`",
            )
        account.tokens = kept

    def remove(self, name: str) -> None:
        account = self.require(name)
        self.entries.remove(account)

    def save(self, path: str | Path | None = None) -> Path:
        """Write the file atomically, readable by its owner only (it holds hashes)."""
        target = Path(path or self.path or default_accounts_path()).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        data = AccountsFile(accounts=self.entries).model_dump(mode="json", exclude_none=True)
        text = (
            "# Who may decide conflicts of which modules. Written by `sync-pipeline accounts`; hashes only.\n"
            + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        )
        handle, temporary = tempfile.mkstemp(prefix=".accounts-", suffix=".yaml", dir=target.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(temporary, 0o600)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self.path = target
        return target


def _hash_password(password: str | None) -> str | None:
    if password is None:
        return None
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadInputError(
            f"the password is shorter than {MIN_PASSWORD_LENGTH} characters", "choose a longer password"
        )
    return _hasher.hash(password)


class AccountsSource:
    """The accounts of a file, read again when the file changes, so that `sync-pipeline accounts`
    takes effect in a running review page without a restart."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._stamp: tuple[int, int] | None = None
        self._accounts = Accounts.load(self.path)
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def current(self) -> Accounts:
        stamp = self._stat()
        if stamp is not None and stamp != self._stamp:
            # A file being rewritten is replaced atomically, so a read sees the old or the new one.
            try:
                self._accounts = Accounts.load(self.path)
                self._stamp = stamp
            except AccountsError:
                pass  # a hand edit in progress: keep serving the last good accounts
        return self._accounts


class StaticAccounts:
    """Accounts held in memory (tests, embedding)."""

    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    def current(self) -> Accounts:
        return self._accounts
