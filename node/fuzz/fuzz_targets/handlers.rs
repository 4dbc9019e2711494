//! Fuzz target: `mesh_node::fuzzing::handlers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_node::fuzzing::handlers(data));
