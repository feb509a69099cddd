"""neurocache: brain CT DICOM slices -> a validated, chunked Zarr cache of HU arrays + a feature table.

The build path imports numpy, pydicom, zarr and dask only (never torch), so caching stays cheap.
"""

__version__ = "0.1.0"
SCHEMA_VERSION = 2  # 2: fixes/n_frames columns, new reason codes, incremental-build attrs
