"""The evolutionary architecture search ("Search for Efficient LLMs", Shen et al. 2024)."""
