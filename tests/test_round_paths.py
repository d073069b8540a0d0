"""A consortium round on the loopback grid: peers' ciphertext goes down through the
one grid exchange, is counted, and each site's report of what it decrypted carries
the reconstruction its grantor measured (server/strategy.py, server/ledger.py)."""

from __future__ import annotations

import math

from loopback_grid import LoopbackGrid, run_loopback_study, small_study

from client.client_app import build_client_app
from simulations.identities import provision_identities


def test_a_consortium_round_sends_peers_ciphertext_and_records_what_each_site_read(
    tmp_path, monkeypatch
):
    # Prepare: 3 sites share 4 AES-GCM images a round with every other site
    study = small_study(
        tmp_path,
        monkeypatch,
        num_rounds=2,
        exchange="consortium",
        method="aes-gcm",
        share_per_round=4,
    )
    provision_identities(study)  # the study CA and each site's identity, as medfed run makes
    grid = LoopbackGrid(build_client_app(study), study.num_sites)

    # Execute
    first, second = run_loopback_study(grid, study)

    # Assert: round 1 has nothing to pass on; round 2 sends each site its 2 peers' shares
    assert all(s.ok for r in (first, second) for s in r.sites)
    assert all(s.bytes["ciphertext_down"] == 0 and s.peers == {} for s in first.sites)
    up = {s.site: s.bytes["ciphertext_up"] for s in first.sites}
    recon = {s.site: s.recon for s in first.sites}
    for site in second.sites:
        others = sorted(name for name in up if name != site.site)
        assert site.bytes["ciphertext_down"] == sum(up[name] for name in others)
        assert sorted(site.peers) == others
        for name in others:
            got = site.peers[name]
            assert got["images"] == 4
            assert all(
                got[k] == recon[name][k] or (math.isinf(got[k]) and math.isinf(recon[name][k]))
                for k in ("mse", "psnr", "ssim")
            )
    assert second.totals["ciphertext_down"] == 2 * sum(up.values())
    assert first.totals["grant_up"] > 0 and first.totals["grant_down"] > 0
