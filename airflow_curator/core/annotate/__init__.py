"""The annotate step: DALI decoding, the CLIP model and its weights, the score heads.

Heavy dependencies (DALI, torch, open_clip) are imported lazily, inside functions."""
