"""Crystalline CLLM agent: crawler, file monitor, continuous trainer and the `cllm` CLI."""
