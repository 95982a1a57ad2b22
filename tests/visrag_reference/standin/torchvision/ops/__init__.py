"""torchvision.ops stand-in: nothing but the `misc` module timm imports from."""
