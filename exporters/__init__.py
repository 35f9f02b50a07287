"""Exporters from an mlwq checkpoint to deployable formats (GGUF for the patched llama.cpp)."""
