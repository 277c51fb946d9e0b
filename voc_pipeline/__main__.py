"""Allows `python -m voc_pipeline ...` as a synonym of the `voc-pipeline` console script."""

from voc_pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
