"""A one-line cause from a Flower component's log (port taken, TLS, auth, unreachable)."""

from __future__ import annotations

import re

ANSI = re.compile(r"\x1b\[[0-9;]*m")

# (pattern in the component's log, what it means)
CAUSES = (
    (r"address already in use", "its port is already in use by another program"),
    (
        r"CERTIFICATE_VERIFY_FAILED|certificate verify failed",
        "TLS: the SuperLink's certificate is not signed by the CA this SuperNode trusts "
        "(wrong --root-certificates / ca.crt)",
    ),
    (
        r"KEY_VALUES_MISMATCH|key values mismatch",
        "TLS: the server key does not belong to the server certificate",
    ),
    (r"SSL|TLS handshake", "TLS handshake failed (certificate or CA mismatch)"),
    (
        r"Failed to activate SuperNode|code: 2004",
        "the SuperLink refused this SuperNode's authentication key: it is not registered "
        "(`flwr supernode register KEY.pub`) or belongs to another federation",
    ),
    (r"Unable to parse the private key", "its authentication private key file cannot be read"),
    (
        r"Connection refused|Errno 111|Name or service not known|Temporary failure in name",
        "it cannot reach the SuperLink (nothing listens at that address)",
    ),
    (r"No such file or directory", "a file it needs is missing"),
)


def diagnose(text: str) -> str:
    """A one-line cause from a component's log, plus its last error lines."""
    text = re.sub(r"[\u2500-\u257f]", " ", ANSI.sub("", text))  # rich's boxes
    cause = next((why for pat, why in CAUSES if re.search(pat, text, flags=re.I)), None)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"error|exception|failed|refused|code:", ln, re.I)]
    detail = " | ".join((errors or lines)[-3:])
    if cause:
        return f"{cause}; log: {detail}" if detail else cause
    return detail or "no output"
