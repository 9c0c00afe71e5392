//! The receiver's path check ([`RelPath::parse`]) on arbitrary bytes: never panics, and
//! whatever it accepts stays inside the destination: relative, no `.`/`..`/empty component,
//! no NUL, within the caps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_copy::internals::transfer::fs::{RelPath, MAX_COMPONENT_LEN, MAX_DEPTH, MAX_PATH_LEN};

fuzz_target!(|s: &[u8]| {
    let Ok(rel) = RelPath::parse(s) else { return };
    assert_eq!(rel.as_bytes(), s);
    assert!(!s.starts_with(b"/") && s.len() <= MAX_PATH_LEN);
    let mut depth = 0;
    for c in rel.components() {
        depth += 1;
        assert!(!c.is_empty() && c != "." && c != "..", "component {c:?} of {s:?}");
        assert!(c.len() <= MAX_COMPONENT_LEN);
        assert!(!c.as_encoded_bytes().contains(&0), "{s:?}");
    }
    assert!(depth <= MAX_DEPTH);
    assert_eq!(rel.first(), s.split(|&b| b == b'/').next().unwrap());
    if let Some(parent) = rel.parent() {
        assert!(RelPath::parse(parent.as_bytes()).is_ok());
    }
    let path = rel.as_path();
    assert!(path.is_relative());
    assert!(path.components().all(|c| matches!(c, std::path::Component::Normal(_))));
});
