"""Models: the meminf_* architectures registered with timm (zoo), building any timm model for the data (build),
and P models trained as one (packing)."""
