//! The fuzz targets' inputs, on every `cargo test` (stable, no fuzzer needed): the seeds a
//! fuzzer starts from, every input a fuzzer ever found a problem with
//! (`node/fuzz/regressions/<target>/`, kept after the fix), and a few thousand seeded
//! mutations of the seeds. None may panic.
//!
//! Regenerate the seeds (after a wire change): `cargo test -p mesh-node --test
//! fuzz_regressions -- --ignored write_seeds`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use mesh_node::fuzzing;

const TARGETS: [&str; 6] = ["wire", "local_api", "join_code", "config_files", "text", "handlers"];

fn run(target: &str, data: &[u8]) {
    match target {
        "wire" => fuzzing::wire(data),
        "local_api" => fuzzing::local_api(data),
        "join_code" => fuzzing::join_code(data),
        "config_files" => fuzzing::config_files(data),
        "text" => fuzzing::text(data),
        "handlers" => fuzzing::handlers(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn saved_inputs_run_clean() {
    let mut n = 0;
    for t in TARGETS {
        for kind in ["seeds", "regressions"] {
            for f in files(&fuzz_dir().join(kind).join(t)) {
                let data = std::fs::read(&f).unwrap();
                let r = std::panic::catch_unwind(|| run(t, &data));
                assert!(r.is_ok(), "{} panics in target {t}", f.display());
                n += 1;
            }
        }
    }
    assert!(n >= TARGETS.len(), "seed files are missing ({n} found)");
}

#[test]
fn the_committed_seeds_are_the_current_encodings() {
    // Every target has seeds, and each is what the current code encodes (a wire change that
    // breaks them means: regenerate, see the module docs). A sealed payload carries a fresh
    // nonce each time, so that one only has to be there.
    for t in TARGETS {
        assert!(!files(&fuzz_dir().join("seeds").join(t)).is_empty(), "no seeds for {t}");
    }
    for (t, name, data) in fuzzing::seeds() {
        let path = fuzz_dir().join("seeds").join(t).join(&name);
        let committed = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("seed {} missing ({e}): regenerate the seeds", path.display()));
        if name != "gossip-topic-sealed" {
            assert!(
                committed == data,
                "seed {} is stale: regenerate the seeds",
                path.display()
            );
        }
        run(t, &data);
    }
}

#[test]
fn seeded_mutations_of_the_seeds_run_clean() {
    let seed = std::env::var("MESH_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() >> 12);
    eprintln!("fuzz mutations: seed {seed} (replay with MESH_TEST_SEED={seed})");
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64*: reproducible from the seed.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let seeds = fuzzing::seeds();
    for _ in 0..20_000 {
        let (t, _, base) = &seeds[(next() as usize) % seeds.len()];
        let mut data = base.clone();
        let edits = 1 + next() % 8;
        for _ in 0..edits {
            let r = next();
            if data.is_empty() {
                data.push(r as u8);
                continue;
            }
            let at = (r >> 8) as usize % data.len();
            match r % 5 {
                0 => data[at] ^= 1 << ((r >> 40) % 8),
                1 => data[at] = (r >> 32) as u8,
                2 => data.insert(at, (r >> 24) as u8),
                3 => {
                    data.remove(at);
                }
                _ => data.truncate(at),
            }
        }
        let input = data.clone();
        let r = std::panic::catch_unwind(|| run(t, &input));
        assert!(r.is_ok(), "target {t} panics on {data:?} (seed {seed})");
    }
}

#[test]
#[ignore = "writes node/fuzz/seeds; run by hand after a wire change"]
fn write_seeds() {
    for (t, name, data) in fuzzing::seeds() {
        let dir = fuzz_dir().join("seeds").join(t);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    }
}
