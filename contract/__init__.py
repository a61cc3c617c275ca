"""What the trainer writes and the service reads, written once: the networks, the model bundle's format,
image listing and decoding, the networks' input normalisation, the device choice, picking the fastest of a few
candidates by timing them, and atomic file writes.

Both `trainer` and `service` import this package; it imports neither (tests/contract/test_boundaries.py checks).
"""
