"""The VisRAG-Ret reference harness: what runs INSIDE the isolated reference environment.

`build_tiny` writes a tiny model directory from the published code, `embed` computes the published
code's vectors, `tiny_vit` registers the tiny timm tower, `standin/torchvision` is the documented
three-transform torchvision the published code imports. The pytest side is tests/visrag_fixtures.py.
"""
