"""Keyed pseudonyms: what replaces a DICOM's identifiers (Patient ID, SOP Instance UID, the export's file
names) wherever ingestion writes anything.

A pseudonym is HMAC-SHA256 of the value under a secret key the site keeps, cut to 128 bits: the same
patient gets the same pseudonym in every span built with the key (so ExampleGen's split by patient holds
across spans), and without the key nobody can test a guessed MRN against it (an unkeyed hash of a
7-digit MRN is reversed by trying all ten million). The key comes from a file or the environment variable
CXR_PSEUDONYM_KEY, never from the data's folders, and is never written anywhere.
"""
import hashlib
import hmac
import os
import stat
from typing import Optional, Sequence

KEY_ENVIRONMENT_VARIABLE = "CXR_PSEUDONYM_KEY"
MIN_KEY_CHARACTERS = 32  # 128 bits as hex, the least a key may hold
_DIGEST_HEX = 32


class PseudonymKeyError(ValueError):
    """The pseudonym key is missing, too short, readable by anyone, or kept beside the data."""


class PseudonymKey:
    def __init__(self, secret: bytes, origin: str):
        if len(secret.strip()) < MIN_KEY_CHARACTERS:
            raise PseudonymKeyError(f"the pseudonym key in {origin} holds {len(secret.strip())} characters; at least "
                            f"{MIN_KEY_CHARACTERS} expected (make one: python3 -c 'import secrets; "
                            f"print(secrets.token_hex(32))')")
        self._secret = secret.strip()
        self.origin = origin  # where it came from, for messages; never the key itself

    def __repr__(self) -> str:
        return f"PseudonymKey(from {self.origin})"

    def pseudonym(self, kind: str, value: str) -> str:
        """128 bits of HMAC-SHA256 over (kind, value) as hex: kinds keep a patient's and a file's apart."""
        message = kind.encode("utf-8") + b"\0" + value.strip().encode("utf-8")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:_DIGEST_HEX]


def load_key(key_file: Optional[str], data_folders: Sequence[str] = ()) -> PseudonymKey:
    """The key from `key_file`, else from $CXR_PSEUDONYM_KEY; refused when kept inside a data folder."""
    if key_file:
        path = os.path.realpath(key_file)
        for folder in data_folders:
            if folder and "://" not in folder:
                root = os.path.realpath(folder)
                if path == root or path.startswith(root.rstrip(os.sep) + os.sep):
                    raise PseudonymKeyError(f"--pseudonym-key-file {key_file} lies inside {folder}: keep the key away "
                                    f"from the data and the records (whoever holds both can link them)")
        try:
            mode = os.stat(path).st_mode
            with open(path, "rb") as f:
                secret = f.read()
        except OSError as error:
            raise PseudonymKeyError(f"--pseudonym-key-file {key_file}: cannot read it ({error.strerror})") from None
        if mode & stat.S_IROTH:
            raise PseudonymKeyError(f"--pseudonym-key-file {key_file} is readable by every user (mode "
                            f"{stat.S_IMODE(mode):o}); chmod 600 it (in Kubernetes, mount the Secret with "
                            f"defaultMode 0400)")
        return PseudonymKey(secret, f"--pseudonym-key-file {key_file}")
    value = os.environ.get(KEY_ENVIRONMENT_VARIABLE)
    if not value:
        raise PseudonymKeyError(f"a DICOM span needs a pseudonym key: pass --pseudonym-key-file FILE or set "
                        f"{KEY_ENVIRONMENT_VARIABLE} (at least {MIN_KEY_CHARACTERS} characters; keep it, the same "
                        f"key gives the same pseudonyms in later spans)")
    return PseudonymKey(value.encode("utf-8"), f"${KEY_ENVIRONMENT_VARIABLE}")
