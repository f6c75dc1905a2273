"""Answer filters: ``?exclude=ID,ID``, ``?genre=NAME[,NAME]``, ``?type=TV[,Movie]`` (any of the names given),
turned into one mask of the anime they leave out."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fuserank.api.errors import BadParameter


@dataclass(frozen=True)
class Filters:
    exclude: tuple[int, ...] = ()
    genres: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.exclude or self.genres or self.types)


NO_FILTERS = Filters()


def name_masks(values) -> dict:
    """Lower-case name -> (name as written, bool mask over encoded anime), from one label per anime."""
    out: dict[str, list] = {}
    values = list(values)
    for a, names in enumerate(values):
        for name in names:
            out.setdefault(name.lower(), [name, np.zeros(len(values), bool)])[1][a] = True
    return {k: tuple(v) for k, v in out.items()}


def _mask_of(table: dict, names: tuple[str, ...], parameter: str) -> np.ndarray:
    out = None
    for name in names:
        entry = table.get(name.strip().lower())
        if entry is None:
            valid = ", ".join(sorted(v[0] for v in table.values()))
            raise BadParameter(parameter, f"unknown value {name[:40]!r}; valid: {valid}")
        out = entry[1].copy() if out is None else out | entry[1]
    return out


def drop_mask(bundle, filters: Filters) -> np.ndarray | None:
    """Encoded anime of ``bundle`` the filters leave out (True = dropped), or None without filters."""
    if not filters:
        return None
    drop = np.zeros(bundle.model.n_anime, bool)
    if filters.exclude:
        enc = bundle.model.anime_index(np.asarray(filters.exclude, np.int64))
        drop[enc[enc >= 0]] = True
    if filters.genres:
        drop |= ~_mask_of(bundle.genres, filters.genres, "genre")
    if filters.types:
        drop |= ~_mask_of(bundle.types, filters.types, "type")
    return drop


def values(bundle) -> dict:
    """Valid ``genre`` and ``type`` values of ``bundle``'s model."""
    return {"genre": sorted(v[0] for v in bundle.genres.values()), "type": sorted(v[0] for v in bundle.types.values())}
