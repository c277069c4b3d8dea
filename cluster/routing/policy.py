"""Power of two choices (Mitzenmacher): sample two replicas, send to the less busy one.

Nearly as good as "least loaded" without a global scan, and, unlike it, does not make every
gateway stampede onto the same momentarily idle replica.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def choose_replica(in_flight_requests: Sequence[int], rng: random.Random) -> int:
    """Index of the chosen replica, given the requests each has in flight.

    Two distinct replicas are drawn uniformly; the one with fewer requests in flight wins. The pair
    is drawn in random order, so taking the first on a tie breaks ties randomly.
    """
    count = len(in_flight_requests)
    if count == 0:
        raise ValueError("choose_replica needs at least one replica")
    if count == 1:
        return 0
    first = rng.randrange(count)
    second = rng.randrange(count - 1)
    if second >= first:
        second += 1  # distinct from `first`, still uniform over the others
    return second if in_flight_requests[second] < in_flight_requests[first] else first
