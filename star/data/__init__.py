"""On-disk datasets shared by every training stage: the star-records format (records.py, docs/data_format.md)."""

from star.data.records import (
    FORMAT, KINDS, ImageReadError, ReadStats, RecordReader, RecordWriter, build_manifest, load_image, read_records,
)

__all__ = [
    "FORMAT", "KINDS", "ImageReadError", "ReadStats", "RecordReader", "RecordWriter", "build_manifest", "load_image",
    "read_records",
]
