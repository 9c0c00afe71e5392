//! The receiver's path check ([`RelPath::parse`]) on arbitrary strings: never panics, and
//! whatever it accepts stays inside the destination: relative, no `.`/`..`/empty component,
//! no NUL, within the caps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_copy::internals::transfer::fs::{RelPath, MAX_COMPONENT_LEN, MAX_DEPTH, MAX_PATH_LEN};

fuzz_target!(|s: &str| {
    let Ok(rel) = RelPath::parse(s) else { return };
    assert_eq!(rel.as_str(), s);
    assert!(!s.starts_with('/') && s.len() <= MAX_PATH_LEN);
    let mut depth = 0;
    for c in rel.components() {
        depth += 1;
        assert!(!c.is_empty() && c != "." && c != "..", "component {c:?} of {s:?}");
        assert!(c.len() <= MAX_COMPONENT_LEN);
        assert!(!c.contains('\0'), "{s:?}");
    }
    assert!(depth <= MAX_DEPTH);
    assert_eq!(rel.first(), s.split('/').next().unwrap());
    if let Some(parent) = rel.parent() {
        assert!(RelPath::parse(parent.as_str()).is_ok());
    }
    let path = std::path::Path::new(s);
    assert!(path.is_relative());
    assert!(path.components().all(|c| matches!(c, std::path::Component::Normal(_))));
});
