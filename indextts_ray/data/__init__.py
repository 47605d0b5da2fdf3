"""Data: manifests, validation, Parquet shards, features, tokenizer, speakers, pairing, segmentation, synthetic corpus."""
