"""What the tests and the benchmarks share: the load and soak harness (load: `python -m service` as a
subprocess, the request mix, closed-loop clients, memory samples, the report), the schema fuzzing (fuzzing)
and PNG encoding (images)."""
