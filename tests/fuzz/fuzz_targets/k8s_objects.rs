//! Kubernetes objects (JSON) into the model: see `causeway::fuzzing::k8s_objects`. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    causeway::fuzzing::k8s_objects(data);
});
