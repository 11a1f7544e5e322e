//! A file of the file source: see `causeway::fuzzing::file_source`. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    causeway::fuzzing::file_source(data);
});
