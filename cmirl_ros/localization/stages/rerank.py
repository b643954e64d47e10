"""rerank:<name>: re-score the retrieved candidates with one of `localization.rerank.RERANKERS`
(exact, query_expansion, cross_attention) and re-sort by the new scores."""
from __future__ import annotations

import numpy as np

from cmirl_ros.localization.rerank import RERANKERS, EncodedQuery
from cmirl_ros.localization.stages import Candidates, QueryInput, register_stage


def _reranking_stage(name: str):
    def factory(config, mapdb):
        rescore = RERANKERS.get(name)

        def rerank(candidates: Candidates, query: QueryInput) -> Candidates:
            if not len(candidates):
                return candidates
            scores = rescore(EncodedQuery(query.descriptor, query.tokens), candidates.ids, candidates.scores, mapdb)
            order = np.argsort(-scores, kind="stable")
            reordered = candidates.take(order)
            reordered.scores = np.asarray(scores, np.float32)[order]
            return reordered

        return rerank

    return factory


for _name in RERANKERS.names():
    if _name != "none":
        register_stage("rerank", _name)(_reranking_stage(_name))
