"""Privacy: erasure requests (right to be forgotten), the do-not-export set, forgetting a destination.

    donotexport  HMAC-SHA-256 digests of erased addresses (`privacy/do-not-export.txt`); exports skip them
    requests     an erasure request in (HTTP body or CSV), stored until it is done, and its report
    scrub        erased addresses out of every destination's snapshot and every stored rejects file
    erasure      one erasure run: find, delete, verify, scrub; resumable, counts only in its report
    forget       a destination's state removed (and, if asked, its contacts taken off its list)

Beside the pipeline, below the service: the service loads the do-not-export set and hands the pipeline only
the small `Suppression` it needs (shared.pipeline.result), so the pipeline never imports this package.
"""
