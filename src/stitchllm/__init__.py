"""StitchLLM: serve a family of LLMs block by block, stitching large-model bottoms to small-model tops."""

__version__ = "0.1.0"
