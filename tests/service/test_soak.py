"""A short soak over real HTTP: benchmarks.soak's mix (every API route with good input, and a non-image, bad k,
unknown ids and oversized bodies, each of which must get its 4xx) from 16 closed-loop clients for 8 s against
`python -m service` in a subprocess. Every answer must be the expected one: no 5xx, no dropped connection or
other transport error, nothing logged as an error by the server. The long run, which also watches the server's
memory, is `python -m benchmarks.soak`."""

from __future__ import annotations

import asyncio

from benchmarks.harness.load import Server, drive, generated_images, make_mix, report

LIMIT = 200_000  # the server's body limit: oversized requests stay small


def test_mixed_load_gets_only_the_expected_answers(bundle_dir, index_copy, tmp_path):
    server = Server(bundle_dir, index_copy, tmp_path / "server.log", flags={"max-request-bytes": LIMIT})
    server.start()
    try:
        server.wait_ready(120)
        cases = make_mix(generated_images(32), server.index_ids(), LIMIT)
        soak = asyncio.run(drive(server, cases, clients=16, seconds=8, sample_every=2, timeout=10))
        counts = server.status_counts()
    finally:
        stopped = server.stop()
    # Memory is sampled and shown, not checked: 8 s says nothing about growth.
    lines, failures = report(soak, warmup=2, max_growth=None, server_errors=server.log_errors(),
                             server_counts=counts)
    print("\n".join(lines))
    assert not failures, "\n".join(failures)
    assert stopped, "the server did not stop within 30 s of SIGTERM"
    unanswered = [case.name for case in cases if not soak.tally.latency[case.name]]
    assert not unanswered, f"never answered in {soak.seconds:.1f} s: {unanswered}"
    assert {case.route for case in cases} == {"POST /embed", "POST /classify", "POST /search", "GET /search",
                                              "GET /thumbnails/{id:path}", "POST /index/images"}
    assert counts["5xx"] == 0 and counts["2xx"] >= sum(case.expect == 200 for case in cases)
