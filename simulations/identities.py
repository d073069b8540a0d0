"""The study's grant identities, made by the operator before the sites start.

In simulation the runner acts as the consortium's operator: it makes a
study CA in `<out-dir>/ca/` (ca.key mode 0600, kept by the operator; the
ServerApp never reads it) and, for each site, has the site's own state
folder generate its X25519 key (`sites/site-N/identity/`) and certifies the
public key; the private key never leaves that folder. When the study names
an auditor (`auditor = "auditor"`, a folder relative to out-dir, or an
absolute path), the reading centre's identity is made there too. A
deployment makes the same files with `medfed deploy certs`.
"""

from __future__ import annotations

from pathlib import Path

from client.keys import IDENTITY_DIR
from client.site import site_dir
from encryption.identity import AUDITOR, Identity, install_certificate, request_identity
from encryption.pki import CertificateError, StudyCA
from study.config import Study


def auditor_dir(study: Study) -> Path | None:
    if not study.auditor:
        return None
    path = Path(study.auditor)
    return path if path.is_absolute() else Path(study.out_dir) / path


def provision_identities(study: Study) -> list[Path]:
    """Make (or keep) every identity the study's grants need; their folders."""
    auditor = auditor_dir(study)
    if not study.grant_pairs(auditor=auditor is not None):
        return []
    ca = StudyCA.ensure(Path(study.out_dir) / "ca", study.name)
    folders = {f"site-{i}": site_dir(study, i) / IDENTITY_DIR for i in range(study.num_sites)}
    if auditor is not None:
        folders[AUDITOR] = auditor
    for name, folder in folders.items():
        try:
            Identity.load(folder, identity=name, study=study.name, ca_cert=ca.certificate_pem)
            continue  # made before (a resumed or repeated study)
        except (FileNotFoundError, CertificateError):
            pass
        request = request_identity(folder)  # the key is made in the identity's own folder
        install_certificate(
            folder, ca.issue(name, request), ca.certificate_pem, identity=name, study=study.name
        )
    return list(folders.values())
