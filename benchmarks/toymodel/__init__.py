"""A toy text-to-image model that knows something: coloured shapes, trained here on the CPU.

See ``python -m benchmarks.toymodel --help`` and the toy model's section of docs/benchmarks.md.
"""
