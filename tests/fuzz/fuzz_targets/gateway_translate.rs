//! Any bytes through the prefix translation, out and in: never a panic, never a half-rewritten
//! packet, and whatever is translated translates back: see
//! `causeway_gateway::fuzzing::translate`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    causeway_gateway::fuzzing::translate(data);
});
