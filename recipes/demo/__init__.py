"""The main job: GSOFT vs LoRA vs OFT on real weights and data, plus a certified GS-LipConvNet."""
