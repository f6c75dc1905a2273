"""FuseRank shared core: configuration, artifact loading, the hybrid scorer and the Redis key layout."""
__version__ = "0.1.0"
