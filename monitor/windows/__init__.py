"""Windows: mergeable per-series window statistics, their aggregation, and drift monitors."""
