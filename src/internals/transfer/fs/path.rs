//! Relative paths as they cross the wire, and their validation.
//!
//! A [`RelPath`] is the only way a peer-supplied name reaches the file system. Parsing is total
//! (never panics) and rejects anything that could name a place outside the destination or
//! that the file system cannot hold. Names are bytes, as on Unix: a name that is not UTF-8
//! travels as it is and is shown with `\xNN` for each byte that is not ([`shown`]). Names are
//! printed escaped wherever they are shown (`transfer::printable`), so control and bidi
//! characters in them are kept, not refused.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Component, Path};

/// Longest accepted path, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest accepted path component, in bytes (`NAME_MAX` on common file systems).
pub const MAX_COMPONENT_LEN: usize = 255;
/// Most components a path may have. Deeper trees are refused on both sides: a path's
/// components are each a directory the receiver may have to create and look at.
pub const MAX_DEPTH: usize = 128;

/// A relative path from the peer, validated.
///
/// Non-empty, components separated by `/`, each component non-empty, not `.` or `..`, without
/// NUL, at most [`MAX_COMPONENT_LEN`] bytes per component and [`MAX_PATH_LEN`] bytes in
/// total, no leading `/`. On Unix any other byte is a name byte: backslashes, control
/// characters and bytes that are not UTF-8 (every place a name is printed escapes them). A
/// build for a system whose names are not bytes (Windows) refuses names that are not UTF-8,
/// backslashes, control characters and drive prefixes such as `C:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelPath(Vec<u8>);

/// Why a path was refused. Paths in messages are in their [`shown`] form.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path is the empty string.
    #[error("refused an empty path: every entry must have a name")]
    Empty,
    /// The path is absolute (`/...`) or starts with a drive prefix (`C:`).
    #[error("refused absolute path {0:?}: only paths relative to the destination are accepted")]
    Absolute(String),
    /// A component is `..`.
    #[error("refused path {0:?}: it contains '..' and could escape the destination")]
    DotDot(String),
    /// A component is empty, `.`, too long, or holds a forbidden character.
    #[error("refused path {path:?}: {reason}")]
    InvalidComponent {
        /// The whole path as received.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path is longer than [`MAX_PATH_LEN`] bytes.
    #[error("refused a path longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    /// The path has more than [`MAX_DEPTH`] components.
    #[error("refused a path more than {MAX_DEPTH} levels deep")]
    TooDeep,
}

impl RelPath {
    /// Validate a path received from the peer.
    pub fn parse(s: impl AsRef<[u8]>) -> Result<RelPath, PathError> {
        let s = s.as_ref();
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        // Checked first so that no error ever carries an unbounded peer string.
        if s.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if s.starts_with(b"/") || has_drive_prefix(s) {
            return Err(PathError::Absolute(shown(s).into_owned()));
        }
        for (depth, comp) in s.split(|&b| b == b'/').enumerate() {
            if depth == MAX_DEPTH {
                return Err(PathError::TooDeep);
            }
            check_component(s, comp)?;
        }
        Ok(RelPath(s.to_vec()))
    }

    /// The path as it travels on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path below a directory it is joined to.
    pub fn as_path(&self) -> &Path {
        Path::new(os(&self.0))
    }

    /// The components, top-level first.
    pub fn components(&self) -> impl Iterator<Item = &OsStr> {
        self.0.split(|&b| b == b'/').map(os)
    }

    /// The top-level name (the first component), as offered.
    pub fn first(&self) -> &[u8] {
        self.0.split(|&b| b == b'/').next().unwrap_or(&self.0)
    }

    /// The last component: the entry's own name.
    pub fn name(&self) -> &OsStr {
        os(self.0.rsplit(|&b| b == b'/').next().unwrap_or(&self.0))
    }

    /// The path of the directory it is in: empty for a top-level name.
    pub fn dir(&self) -> &[u8] {
        self.split().map_or(&[], |(parent, _)| parent)
    }

    /// The path without its last component, or `None` for a top-level name.
    pub fn parent(&self) -> Option<RelPath> {
        // Every prefix of a valid path at a '/' is itself valid.
        self.split().map(|(parent, _)| RelPath(parent.to_vec()))
    }

    fn split(&self) -> Option<(&[u8], &[u8])> {
        let at = self.0.iter().rposition(|&b| b == b'/')?;
        Some((&self.0[..at], &self.0[at + 1..]))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Control characters are kept: every sink escapes them (`transfer::printable`).
        f.write_str(&shown(&self.0))
    }
}

/// A name for showing: as it is when it is UTF-8, else with each byte that is not part of
/// valid UTF-8 written `\xNN` (the name itself travels and is written as its bytes).
pub fn shown(name: &[u8]) -> Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(name) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for chunk in name.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    Cow::Owned(out)
}

/// The bytes of a local name as the wire carries it: a Unix name as it is; elsewhere, where
/// names are not bytes, only a name that is UTF-8 (`None` otherwise).
pub fn name_bytes(name: &OsStr) -> Option<&[u8]> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Some(name.as_bytes())
    }
    #[cfg(not(unix))]
    {
        name.to_str().map(str::as_bytes)
    }
}

/// A name from the wire as a local name. Off Unix, [`RelPath::parse`] has refused names that
/// are not UTF-8, and a link target that is not UTF-8 becomes an empty name (refused there).
pub fn os(bytes: &[u8]) -> &OsStr {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        OsStr::from_bytes(bytes)
    }
    #[cfg(not(unix))]
    {
        OsStr::new(std::str::from_utf8(bytes).unwrap_or_default())
    }
}

/// Sender side: the [`RelPath`] for `rel` (relative to the sent root) below the top-level name
/// `root_name`. An empty `rel` names the root itself.
pub fn rel_path_of(root_name: &OsStr, rel: &Path) -> Result<RelPath, PathError> {
    let not_bytes = |name: &OsStr| PathError::InvalidComponent {
        path: name.to_string_lossy().into_owned(),
        reason: "names on this system must be valid Unicode",
    };
    let root = RelPath::parse(name_bytes(root_name).ok_or_else(|| not_bytes(root_name))?)?;
    if root.parent().is_some() {
        return Err(PathError::InvalidComponent {
            path: root.to_string(),
            reason: "the top-level name must be a single component",
        });
    }
    let mut s = root.0;
    for comp in rel.components() {
        match comp {
            Component::Normal(name) => {
                s.push(b'/');
                s.extend_from_slice(name_bytes(name).ok_or_else(|| not_bytes(name))?);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(PathError::DotDot(rel.display().to_string())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Absolute(rel.display().to_string()))
            }
        }
    }
    RelPath::parse(&s)
}

/// `C:`, `c:foo`: a Windows drive prefix on the first component (an ordinary name elsewhere).
fn has_drive_prefix(b: &[u8]) -> bool {
    cfg!(windows) && b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

fn check_component(path: &[u8], comp: &[u8]) -> Result<(), PathError> {
    let reason = if comp.is_empty() {
        "it has an empty component (a doubled or trailing '/')"
    } else if comp == b"." {
        "it has a '.' component"
    } else if comp == b".." {
        return Err(PathError::DotDot(shown(path).into_owned()));
    } else if comp.len() > MAX_COMPONENT_LEN {
        "a component is longer than 255 bytes"
    } else if comp.contains(&0) {
        "it contains a NUL byte"
    } else if !cfg!(unix) && std::str::from_utf8(comp).is_err() {
        "it is not valid Unicode, which names on this system must be"
    } else if cfg!(windows) && comp.contains(&b'\\') {
        "it contains a backslash, which is a separator on Windows"
    } else if cfg!(windows)
        && std::str::from_utf8(comp).is_ok_and(|c| c.chars().any(char::is_control))
    {
        "it contains a control character, which Windows does not allow in names"
    } else {
        return Ok(());
    };
    Err(PathError::InvalidComponent { path: shown(path).into_owned(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: impl AsRef<[u8]> + std::fmt::Debug) -> RelPath {
        match RelPath::parse(&s) {
            Ok(p) => p,
            Err(e) => panic!("{s:?} should be valid: {e}"),
        }
    }

    #[test]
    fn paths_are_at_most_max_depth_levels_deep() {
        let deepest = vec!["d"; MAX_DEPTH].join("/");
        assert!(RelPath::parse(&deepest).is_ok());
        let deeper = format!("{deepest}/d");
        assert!(matches!(RelPath::parse(&deeper), Err(PathError::TooDeep)));
    }

    #[test]
    fn valid_paths() {
        for s in [
            "a",
            "a/b",
            "a b/c.txt",
            ".hidden",
            "a..b",
            "...",
            "x/C:",
            "ünïcode/ファイル",
            "1:",
            &"n".repeat(MAX_COMPONENT_LEN),
        ] {
            assert_eq!(ok(s).as_bytes(), s.as_bytes());
        }
        // Any name a Unix file system allows but NUL and `/`: backslashes, control and bidi
        // characters (shown escaped wherever they are printed), drive-like prefixes.
        #[cfg(unix)]
        for s in
            ["a\\b", "..\\x", "new\nline", "tab\there", "\x1b[31mred", "a\u{9b}b", "C:", "C:foo"]
        {
            assert_eq!(ok(s).as_bytes(), s.as_bytes());
        }
        // And bytes that are not UTF-8, kept as they are and shown as `\xNN`.
        #[cfg(unix)]
        {
            let p = ok(b"caf\xe9/\xff\xfe.txt");
            assert_eq!(p.as_bytes(), b"caf\xe9/\xff\xfe.txt");
            assert_eq!(p.to_string(), "caf\\xe9/\\xff\\xfe.txt");
            assert_eq!(p.name().len(), 6);
        }
        let long = vec!["d".repeat(MAX_COMPONENT_LEN); 16].join("/");
        assert!(long.len() <= MAX_PATH_LEN);
        ok(&long);
    }

    #[test]
    fn invalid_paths() {
        type IsExpected = fn(&PathError) -> bool;
        let cases: &[(&str, IsExpected)] = &[
            ("", |e| matches!(e, PathError::Empty)),
            ("/a", |e| matches!(e, PathError::Absolute(_))),
            ("/", |e| matches!(e, PathError::Absolute(_))),
            ("..", |e| matches!(e, PathError::DotDot(_))),
            ("a/../b", |e| matches!(e, PathError::DotDot(_))),
            ("a/..", |e| matches!(e, PathError::DotDot(_))),
            (".", |e| matches!(e, PathError::InvalidComponent { .. })),
            ("./a", |e| matches!(e, PathError::InvalidComponent { .. })),
            ("a/./b", |e| matches!(e, PathError::InvalidComponent { .. })),
            ("a//b", |e| matches!(e, PathError::InvalidComponent { .. })),
            ("a/", |e| matches!(e, PathError::InvalidComponent { .. })),
            ("a\0b", |e| matches!(e, PathError::InvalidComponent { .. })),
        ];
        for (s, is_expected) in cases {
            match RelPath::parse(s) {
                Ok(p) => panic!("{s:?} accepted as {p:?}"),
                Err(e) => assert!(is_expected(&e), "{s:?}: unexpected error {e:?}"),
            }
        }
        let long_comp = format!("a/{}", "n".repeat(MAX_COMPONENT_LEN + 1));
        assert!(matches!(RelPath::parse(&long_comp), Err(PathError::InvalidComponent { .. })));
        let long_path = vec!["d".repeat(200); 21].join("/");
        assert!(long_path.len() > MAX_PATH_LEN);
        assert!(matches!(RelPath::parse(&long_path), Err(PathError::TooLong)));
    }

    #[test]
    fn error_messages_escape_peer_strings() {
        let Err(e) = RelPath::parse("x/\x1b]0;owned\x07/../y") else {
            panic!("accepted '..'");
        };
        let msg = e.to_string();
        assert!(!msg.chars().any(char::is_control), "{msg:?}");
        assert!(msg.contains("'..'"), "{msg}");
    }

    #[test]
    fn accessors() {
        let p = ok("top/mid/leaf.txt");
        assert_eq!(p.components().collect::<Vec<_>>(), ["top", "mid", "leaf.txt"]);
        assert_eq!(p.first(), b"top");
        assert_eq!(p.name(), "leaf.txt");
        assert_eq!(p.dir(), b"top/mid");
        assert_eq!(ok("top").dir(), b"");
        assert_eq!(p.as_path(), Path::new("top/mid/leaf.txt"));
        assert_eq!(p.parent(), Some(ok("top/mid")));
        assert_eq!(p.parent().and_then(|p| p.parent()), Some(ok("top")));
        assert_eq!(ok("top").parent(), None);
        assert_eq!(ok("top").first(), b"top");
        assert_eq!(ok("top").name(), "top");
        assert_eq!(p.to_string(), "top/mid/leaf.txt");
    }

    #[test]
    fn rel_path_of_joins_below_the_root_name() {
        let rel_path_of = |root: &str, rel: &Path| rel_path_of(OsStr::new(root), rel);
        assert_eq!(rel_path_of("results", Path::new("a/b.txt")).ok(), Some(ok("results/a/b.txt")));
        assert_eq!(rel_path_of("results", Path::new("./a/./b")).ok(), Some(ok("results/a/b")));
        assert_eq!(rel_path_of("results", Path::new("")).ok(), Some(ok("results")));
        assert!(matches!(rel_path_of("results", Path::new("../x")), Err(PathError::DotDot(_))));
        assert!(matches!(rel_path_of("results", Path::new("/etc")), Err(PathError::Absolute(_))));
        assert!(matches!(
            rel_path_of("a/b", Path::new("c")),
            Err(PathError::InvalidComponent { .. })
        ));
        assert!(matches!(rel_path_of("..", Path::new("c")), Err(PathError::DotDot(_))));
        assert_eq!(rel_path_of("r", Path::new("a\\b")).ok(), Some(ok("r/a\\b")));
    }

    #[cfg(unix)]
    #[test]
    fn rel_path_of_keeps_names_that_are_not_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let bad = Path::new(OsStr::from_bytes(b"dir/caf\xe9"));
        let got = rel_path_of(OsStr::from_bytes(b"r\xff"), bad).ok();
        assert_eq!(got, Some(ok(b"r\xff/dir/caf\xe9")));
    }

    #[test]
    fn shown_writes_bytes_that_are_not_utf8_as_hex() {
        assert_eq!(shown("plain ü".as_bytes()), "plain ü");
        assert_eq!(shown(b"a\xffb\xc3"), "a\\xffb\\xc3");
        assert_eq!(shown(b"\xe2\x82\xac\x80"), "\u{20ac}\\x80");
    }

    fn check_accepted(s: &[u8]) {
        if let Ok(p) = RelPath::parse(s) {
            assert_eq!(p.as_bytes(), s);
            assert!(!s.starts_with(b"/"));
            assert!(s.len() <= MAX_PATH_LEN);
            for comp in p.components() {
                assert!(!comp.is_empty() && comp != "." && comp != "..", "{s:?}");
                assert!(comp.len() <= MAX_COMPONENT_LEN);
                assert!(!comp.as_encoded_bytes().contains(&0));
            }
            // The path stays below any directory it is joined to.
            let joined = Path::new("/dest").join(p.as_path());
            assert!(joined.starts_with("/dest"));
            assert!(joined
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_))));
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_any_string(s in ".*") {
            check_accepted(s.as_bytes());
        }

        #[test]
        fn parse_never_panics_on_any_bytes(s in prop::collection::vec(any::<u8>(), 0..64)) {
            check_accepted(&s);
        }

        #[test]
        fn parse_never_panics_on_tricky_strings(s in "[a./\\\\:C\\x00\\x1b ]{0,16}") {
            check_accepted(s.as_bytes());
        }

        #[test]
        fn valid_paths_round_trip(comps in prop::collection::vec("[a-zA-Z0-9 ._-]{1,20}", 1..8)) {
            let s = comps.join("/");
            let all_valid = comps.iter().all(|c| c != "." && c != "..");
            prop_assert_eq!(RelPath::parse(&s).is_ok(), all_valid && !has_drive_prefix(s.as_bytes()));
            check_accepted(s.as_bytes());
        }
    }
}
