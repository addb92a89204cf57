"""bench/engine.py's job-array run: P parts started at once complete one manifest, timed."""


def test_bench_parts_completes_the_manifest_for_each_part_count(load_script):
    engine = load_script("bench/engine.py")
    rows = engine.bench_parts(n=24, batch=8, steps=2, parts=(1, 2), hidden=8, layers=1)
    assert [r["parts"] for r in rows] == [1, 2] and all(r["n"] == 24 and r["samples/s"] > 0 for r in rows)
    assert rows[0]["speed-up"] == "1.00x"
