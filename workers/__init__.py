"""The only package that talks to Ray and vLLM: expert backends and the batched pool."""
