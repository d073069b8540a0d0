#!/usr/bin/env python3
"""Make the certificates and SuperNode keys of the demo federation.

    python deploy/certs.py                   # -> deploy/certs/, 3 hospitals
    python deploy/certs.py --sites 5 --name superlink.example.org --out /secure/dir

Writes ca.crt (the root every SuperNode trusts), server.pem + server.key (the
SuperLink; SANs: superlink, localhost, 127.0.0.1 and every --name) and
site-N.key / site-N.pub (EC P-384 authentication key pair per SuperNode,
OpenSSH format), ca.key (the CA's key, kept to certify sites added later:
mount it into no container) and the key-grant identities site-N/ and
auditor/ (identity.key, identity.crt, ca.crt each; --study names the study
they are certified for). Existing files are kept unless --overwrite. Private keys get
mode 0600; deploy/certs/ is in .gitignore: never commit it.
Needs only the `cryptography` package (no openssl binary); the same code is
`medfed deploy certs` and the compose file's `certs` service.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy import SERVER_NAMES, write_certificates  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "deploy" / "certs"), help="folder (deploy/certs)")
    p.add_argument("--sites", type=int, default=3, help="SuperNode key pairs (3)")
    p.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="HOST",
        help="extra SuperLink host name or IP for the certificate (repeatable)",
    )
    p.add_argument("--study", default="demo", help="study of the identity certificates (demo)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = p.parse_args(argv)
    names = list(dict.fromkeys([*SERVER_NAMES, *args.name]))
    certs = write_certificates(
        args.out, sites=args.sites, names=names, overwrite=args.overwrite, study=args.study
    )
    print(
        f"wrote {certs.folder}: ca.crt ca.key server.pem server.key "
        f"site-0..{args.sites - 1}.key/.pub (SANs: {', '.join(names)}), "
        f"identities site-0..{args.sites - 1}/ auditor/ (study {args.study!r})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
