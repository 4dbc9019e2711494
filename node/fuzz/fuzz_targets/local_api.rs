//! Fuzz target: `mesh_node::fuzzing::local_api`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_node::fuzzing::local_api(data));
