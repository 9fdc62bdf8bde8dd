"""Writers: where documents go at the end of a pipeline (the sharded Parquet store)."""
