"""Teacher-embedding cache: R(view) of every (example, view), computed once, fingerprinted.

Build with `python -m rrjax.cache build --config=...` (or `build_cache`), read with
`TeacherCache.open(path, expected_fingerprint)`. See `store` for the layout and `build`
for how hosts and devices share the work.
"""

from rrjax.cache.build import BuildReport, TeacherForward, build_cache, verify_cache
from rrjax.cache.store import DTYPES, TeacherCache, cache_fingerprint

__all__ = ["BuildReport", "DTYPES", "TeacherCache", "TeacherForward", "build_cache",
           "cache_fingerprint", "verify_cache"]
