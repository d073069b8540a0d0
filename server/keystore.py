"""The operator's key store: where the key that signs a run's checkpoints lives.

A run folder is shared with whoever can write it (co-workers, a backup, a
container's volume); a key kept inside it protects nothing against them, since
they can replace the key and sign what they like. So the key lives with the
operator, outside every run folder:

    $MEDFED_KEY_HOME                          when set (a deployment points it
                                              at a volume of its own)
    $XDG_CONFIG_HOME/medfed/keys              otherwise
    ~/.config/medfed/keys                     when XDG_CONFIG_HOME is unset

The folder is made with mode 0700 and refused when others may write to it;
key files are 0600 and refused when others may read them or when they belong
to another user.

    checkpoint.key           the operator's signing key (32 random bytes),
                             made the first time a study writes a checkpoint
    checkpoint-<id>.key      other keys the operator chose to hold (a
                             colleague's, an older one): checkpoints signed by
                             them verify too, nothing is signed with them

A checkpoint names the key that signed it by its id, the first 32 hex digits
of SHA-256 over a fixed label and the key: the id says which key, never the key.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
from pathlib import Path

from encryption.private_files import UnsafeFileError, read_regular_file

KEY_HOME_ENV = "MEDFED_KEY_HOME"
KEY_BYTES = 32
SIGNING_KEY = "checkpoint.key"
KEY_ID = re.compile(r"[0-9a-f]{32}")


class KeyStoreError(ValueError):
    """A key store or key file that cannot be used safely (the message says why)."""


def key_home() -> Path:
    """The operator's key folder ($MEDFED_KEY_HOME, else the XDG config directory)."""
    env = os.environ.get(KEY_HOME_ENV, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_CONFIG_HOME", "").strip()
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "medfed" / "keys"


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"medfed checkpoint key\0" + key).hexdigest()[:32]


class KeyStore:
    """The keys of one operator (by default the folder `key_home()` names)."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = (home or key_home()).absolute()

    @property
    def signing_path(self) -> Path:
        return self.home / SIGNING_KEY

    def check_outside(self, folder: Path) -> None:
        """Refuse a key store inside the run folder it is to protect."""
        home, run = self.home.resolve(), Path(folder).absolute().resolve()
        if home == run or run in home.parents:
            raise KeyStoreError(
                f"the checkpoint key store {self.home} is inside the run folder {folder}: "
                f"whoever can write that folder could replace the key; set {KEY_HOME_ENV} "
                "to a folder outside every run folder"
            )

    def signing_key(self, *, create: bool) -> tuple[str, bytes]:
        """(id, key) of the operator's signing key, made on first use when `create`."""
        if not self._folder(create=create):
            raise KeyStoreError(f"no checkpoint key store at {self.home}")
        path = self.signing_path
        if create and not os.path.lexists(path):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                pass  # made by a process beside this one: use theirs
            else:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(secrets.token_bytes(KEY_BYTES))
                    fh.flush()
                    os.fsync(fh.fileno())
        key = self._read(path)
        return key_id(key), key

    def key(self, kid: str) -> bytes | None:
        """The key with id `kid` when this operator holds it, else None."""
        if not KEY_ID.fullmatch(kid) or not self._folder(create=False):
            return None
        for path in (self.signing_path, self.home / f"checkpoint-{kid}.key"):
            if os.path.lexists(path):
                key = self._read(path)
                if key_id(key) == kid:
                    return key
                if path != self.signing_path:
                    raise KeyStoreError(f"{path}: holds a key whose id is not {kid}")
        return None

    # -- checks ---------------------------------------------------------------------
    def _folder(self, *, create: bool) -> bool:
        if not self.home.exists():
            if not create:
                return False
            self.home.mkdir(parents=True, mode=0o700)
            self.home.chmod(0o700)  # mkdir's mode is masked by the umask
        st = self.home.stat()
        if not stat.S_ISDIR(st.st_mode):
            raise KeyStoreError(f"the checkpoint key store {self.home} is not a folder")
        if st.st_mode & 0o022:
            raise KeyStoreError(
                f"the checkpoint key store {self.home} is writable by others "
                f"(mode {stat.S_IMODE(st.st_mode):o}): run `chmod 700 {self.home}`"
            )
        if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            raise KeyStoreError(
                f"the checkpoint key store {self.home} belongs to another user (uid {st.st_uid})"
            )
        return True

    @staticmethod
    def _read(path: Path) -> bytes:
        def private(st: os.stat_result) -> str | None:
            if st.st_mode & 0o077:
                return (
                    f"others may read this key (mode {stat.S_IMODE(st.st_mode):o}): "
                    f"run `chmod 600 {path}`"
                )
            if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
                return f"belongs to another user (uid {st.st_uid})"
            return None

        try:
            key = read_regular_file(path, KEY_BYTES, private)
        except UnsafeFileError as exc:
            raise KeyStoreError(f"{path}: {exc}") from None
        except OSError as exc:
            raise KeyStoreError(f"{path}: cannot read the key ({exc.strerror or exc})") from None
        if len(key) != KEY_BYTES:
            raise KeyStoreError(f"{path}: not a medfed key ({KEY_BYTES} bytes)")
        return key
