"""In-model mixture-of-experts layers on vLLM's fused MoE kernels.

Not the Hugging Face Hub's `kernels` package: this one deliberately defines no
`__version__` and is installed under the `conclave` distribution, so transformers'
availability check does not mistake it for the Hub's (see docs/architecture.md).
"""
