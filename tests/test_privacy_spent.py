"""server.results.privacy_spent on typed round records: a central mode composes
the effective noise multipliers the rounds recorded; local-dpsgd reports the
worst site's epsilon with every site's."""

from __future__ import annotations

import pytest

from server.results import privacy_spent
from study.config import Study
from study.privacy import epsilon_spent
from study.schema import (
    AggregationRecord,
    PrivacyRecord,
    RoundRecord,
    SiteRecord,
    append_jsonl,
)


def _record(rnd: int, examples: dict[str, int]) -> RoundRecord:
    sites = [SiteRecord(site=s, ok=True, examples=n) for s, n in examples.items()]
    return RoundRecord.build(rnd, sites, {}, 1.0)


def test_a_central_round_composes_the_recorded_multipliers(tmp_path):
    study = Study(dp="client-fixed", dp_noise_multiplier=1.1, out_dir=str(tmp_path))
    first = _record(1, {"site-0": 10})
    first.privacy = AggregationRecord("uniform", 0.9)
    first.privacy = privacy_spent(study, first)
    append_jsonl(tmp_path / "rounds.jsonl", first.to_json())
    second = _record(2, {"site-0": 10})
    second.extra["privacy"] = {"aggregation_weights": "examples", "effective_noise_multiplier": 0.5}
    spent = privacy_spent(study, second)
    assert isinstance(spent, PrivacyRecord)
    expected = epsilon_spent(study, 2, noise_multipliers=[0.9, 0.5]).epsilon
    assert spent.epsilon == pytest.approx(expected)
    assert (spent.aggregation_weights, spent.effective_noise_multiplier) == ("examples", 0.5)
    assert spent.rounds_done == 2 and spent.sites is None


def test_a_central_round_without_its_aggregation_counts_the_studys_multiplier(tmp_path):
    study = Study(dp="server-fixed", dp_noise_multiplier=1.1, out_dir=str(tmp_path))
    spent = privacy_spent(study, _record(1, {"site-0": 10}))
    assert spent.epsilon == pytest.approx(epsilon_spent(study, 1).epsilon)
    assert spent.aggregation_weights is None and spent.effective_noise_multiplier is None


def test_local_dpsgd_reports_the_worst_site_and_every_site(tmp_path):
    study = Study(dp="local-dpsgd", dp_noise_multiplier=1.0, batch_size=16, out_dir=str(tmp_path))
    spent = privacy_spent(study, _record(1, {"site-0": 20, "site-1": 100}))
    per_site = {n: epsilon_spent(study, 1, num_examples=n).epsilon for n in (20, 100)}
    assert spent.sites == {"site-0": per_site[20], "site-1": per_site[100]}
    assert spent.epsilon == max(per_site.values())
    assert (spent.aggregation_weights, spent.effective_noise_multiplier) == ("examples", 1.0)
    assert list(spent.to_json())[-1] == "sites"
