"""retrieve:faiss: the map's FAISS search with the self-match guard (keyframes within
`exclude_seconds` of the query stamp, of `exclude_session` when set, are skipped)."""
from __future__ import annotations

import numpy as np

from cmirl_ros.localization.stages import Candidates, QueryInput, register_stage


@register_stage("retrieve", "faiss")
def faiss_retrieval(config, mapdb):
    fetch = config.candidates_to_fetch()

    def retrieve(_: Candidates | None, query: QueryInput) -> Candidates:
        scores, ids = mapdb.search(query.descriptor[None], fetch, exclude_stamp=query.stamp,
                                   exclude_seconds=config.exclude_seconds, exclude_session=config.exclude_session)
        valid = ids[0] >= 0
        ids = ids[0][valid]
        return Candidates(ids, scores[0][valid].astype(np.float32), mapdb.keyframes.poses(ids))

    return retrieve
