"""Patient-level partitions into sites: iid, label-skew, quantity-skew, natural.

Every scheme works on patients, never on images, so no patient is in two
sites; every scheme is a pure function of its inputs and the seed. `natural`
follows the institutions the data name (partition CSV, DICOM InstitutionName);
for NIH ChestX-ray14, which names none, `stable_institution` assigns each
patient to one by a hash of its id (the phantoms' partitioning.csv uses the
same rule, so phantom and real NIH studies split alike).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

SCHEMES = ("iid", "label-skew", "quantity-skew", "natural")


def partition_patients(
    patients: Sequence[str],
    num_partitions: int,
    scheme: str = "iid",
    *,
    seed: int = 0,
    alpha: float = 0.5,
    patient_class: Mapping[str, str] | None = None,
    patient_site: Mapping[str, str | None] | None = None,
) -> list[list[str]]:
    """Split patients into num_partitions disjoint, non-empty lists.

    label-skew: Dirichlet(alpha) share of each class (patient_class) per site.
    quantity-skew: site sizes from Dirichlet(alpha). natural: patient_site
    (partition CSV or institution tag); institutions are sorted and dealt out
    round-robin when there are more institutions than sites.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if alpha <= 0:
        raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}")
    patients = sorted(set(patients))
    if len(patients) < num_partitions:
        raise ValueError(f"cannot split {len(patients)} patient(s) into {num_partitions} sites")
    rng = np.random.default_rng([seed, 31337, num_partitions])
    if scheme == "iid":
        order = rng.permutation(len(patients))
        return [
            sorted(patients[i] for i in chunk) for chunk in np.array_split(order, num_partitions)
        ]
    if scheme == "quantity-skew":
        return _quantity_skew(patients, num_partitions, rng, alpha)
    if scheme == "label-skew":
        if patient_class is None:
            raise ValueError("label-skew needs a class per patient")
        return _label_skew(patients, num_partitions, rng, alpha, patient_class)
    return _natural(patients, num_partitions, patient_site or {})


def _quantity_skew(patients, k, rng, alpha):
    order = rng.permutation(len(patients))
    share = rng.dirichlet(np.full(k, alpha))
    # every site keeps at least one patient; the rest follow the Dirichlet shares
    extra = len(patients) - k
    counts = np.floor(share * extra).astype(int)
    for i in np.argsort(-share)[: extra - counts.sum()]:
        counts[i] += 1
    counts += 1
    bounds = np.cumsum(counts)[:-1]
    return [sorted(patients[i] for i in chunk) for chunk in np.split(order, bounds)]


def _label_skew(patients, k, rng, alpha, patient_class):
    missing = [p for p in patients if p not in patient_class]
    if missing:
        raise ValueError(f"label-skew: no class for {len(missing)} patient(s), e.g. {missing[:3]}")
    classes = sorted({patient_class[p] for p in patients})
    for _attempt in range(100):
        sites: list[list[str]] = [[] for _ in range(k)]
        for c in classes:
            members = [p for p in patients if patient_class[p] == c]
            members = [members[i] for i in rng.permutation(len(members))]
            share = rng.dirichlet(np.full(k, alpha))
            cuts = (np.cumsum(share)[:-1] * len(members)).astype(int)
            for site, chunk in enumerate(np.split(np.array(members, dtype=object), cuts)):
                sites[site].extend(chunk.tolist())
        if min(len(s) for s in sites) >= 1:
            return [sorted(s) for s in sites]
    # Very small alpha with few patients: give each empty site one patient from the largest.
    for s in sites:
        if not s:
            largest = max(sites, key=len)
            s.append(largest.pop())
    return [sorted(s) for s in sites]


def _natural(patients, k, patient_site):
    unknown = [p for p in patients if patient_site.get(p) in (None, "")]
    if unknown:
        raise ValueError(
            f"natural partition: {len(unknown)} patient(s) have no institution or partition entry, "
            f"e.g. {unknown[:3]}; add them to the partition CSV or use another scheme"
        )
    names = sorted({str(patient_site[p]) for p in patients}, key=_natural_key)
    if len(names) < k:
        raise ValueError(
            f"natural partition: the data has {len(names)} institution(s) ({', '.join(names)}) "
            f"but {k} sites were asked for"
        )
    site_of = {name: i % k for i, name in enumerate(names)}
    sites: list[list[str]] = [[] for _ in range(k)]
    for p in patients:
        sites[site_of[str(patient_site[p])]].append(p)
    return [sorted(s) for s in sites]


def _natural_key(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def stable_institution(patient: str, institutions: int) -> int:
    """The 0-based institution of a patient whose dataset names none (NIH ChestX-ray14
    comes from one hospital): a hash of the patient id alone, so the same patient is at
    the same institution in every study, for every seed and on every machine."""
    if institutions < 1:
        raise ValueError(f"institutions must be >= 1, got {institutions}")
    digest = hashlib.sha256(f"medfed-institution:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % institutions
