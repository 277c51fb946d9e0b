"""One module per stage (`run_<stage>(config)`); `voc_pipeline.graph` orders them and keeps their cache.

A stage module reads its inputs through `voc_pipeline.artifacts` and never imports another stage.
"""
