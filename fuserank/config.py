"""Typed settings shared by the batch job and the API, so both score with exactly the same knobs."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class HybridSettings:
    """Knobs of the two-stage hybrid (see fuserank.scorer); part of the list version hash."""

    top_n: int = 50
    neighbours: int = 50            # anime neighbour list length (stage 2 graph, /anime/<id>/similar)
    similar_users: int = 50         # stage 1: how many similar users vote
    like_threshold: int = 8         # raw 1-10 rating that counts as "rated highly"
    stage1_seeds: int = 1           # stage 2 expands from this many stage-1 picks ...
    expand_own_likes: bool = True   # ... and from the user's own highly rated anime
    # Weights chosen on a validation split carved from the 2020 train split (evaluation/README.md):
    # with ranking-trained embeddings the model's own u.v carries most of the quality.
    weight_stage1: float = 0.05
    weight_stage2: float = 0.05
    weight_model: float = 1.0       # the model's own u.v cosine as a third term

    def __post_init__(self):
        for name in ("top_n", "neighbours", "similar_users", "stage1_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.like_threshold <= 10:
            raise ValueError(f"like_threshold must be in 1..10, got {self.like_threshold}")
        for name in ("weight_stage1", "weight_stage2", "weight_model"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def with_overrides(self, **overrides) -> "HybridSettings":
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if k in known and v is not None})

    def digest(self) -> str:
        """Stable short hash: two precomputes with different settings never share a list version."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HybridSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
