//! Path rules for stored files. Pure: a decoded request path in, a validated
//! relative path out, or the reason it is refused.
//!
//! A `StoredPath` is relative, `/`-separated, UTF-8, with no empty, `.` or `..` segment, no NUL,
//! backslash or control character, within length limits, and with an extension that the
//! allow/deny lists accept. Joining it under a root can therefore never escape the root.

use std::fmt;
use std::path::{Path, PathBuf};

/// Limits applied to every stored path.
#[derive(Debug, Clone)]
pub struct PathRules {
    pub max_filename_bytes: usize,
    pub max_path_bytes: usize,
    /// Lowercase; empty means all allowed.
    pub allowed_extensions: Vec<String>,
    /// Lowercase.
    pub denied_extensions: Vec<String>,
}

impl Default for PathRules {
    fn default() -> Self {
        Self {
            max_filename_bytes: 255,
            max_path_bytes: 1024,
            allowed_extensions: Vec::new(),
            denied_extensions: Vec::new(),
        }
    }
}

/// Why a path is refused (400, except `ExtensionNotAllowed`: 403, a policy refusal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path has an empty segment")]
    EmptySegment,
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    #[error("path contains a NUL, backslash or control character")]
    BadCharacter,
    #[error("file name is longer than {0} bytes")]
    NameTooLong(usize),
    #[error("a directory name in the path is longer than {0} bytes")]
    SegmentTooLong(usize),
    #[error("path is longer than {0} bytes")]
    PathTooLong(usize),
    #[error("file extension is not allowed")]
    ExtensionNotAllowed,
}

/// A validated relative path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoredPath(String);

impl StoredPath {
    /// Validate a percent-decoded path (prefix and leading `/` already removed).
    pub fn parse(decoded: &str, rules: &PathRules) -> Result<Self, PathError> {
        if decoded.is_empty() {
            return Err(PathError::Empty);
        }
        if decoded.len() > rules.max_path_bytes {
            return Err(PathError::PathTooLong(rules.max_path_bytes));
        }
        for seg in decoded.split('/') {
            if seg.is_empty() {
                return Err(PathError::EmptySegment);
            }
            if seg == "." || seg == ".." {
                return Err(PathError::DotSegment);
            }
            if seg.chars().any(|c| c == '\\' || c.is_control()) {
                return Err(PathError::BadCharacter);
            }
        }
        let (dirs, name) = decoded.rsplit_once('/').unwrap_or(("", decoded));
        if name.len() > rules.max_filename_bytes {
            return Err(PathError::NameTooLong(rules.max_filename_bytes));
        }
        // Every directory is a name on the filesystem too (NAME_MAX is 255 bytes on Linux
        // filesystems): refuse it here with a reason rather than meet ENAMETOOLONG later.
        let name_max = rules.max_filename_bytes.min(255);
        if !dirs.is_empty() && dirs.split('/').any(|d| d.len() > name_max) {
            return Err(PathError::SegmentTooLong(name_max));
        }
        let ext = extension(name).map(str::to_ascii_lowercase);
        let ext_ref = ext.as_deref().unwrap_or("");
        if rules.denied_extensions.iter().any(|d| d == ext_ref)
            || (!rules.allowed_extensions.is_empty()
                && !rules.allowed_extensions.iter().any(|a| a == ext_ref))
        {
            return Err(PathError::ExtensionNotAllowed);
        }
        Ok(Self(decoded.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// This path under `root`. Safe by construction (no `..`, no absolute segment).
    pub fn under(&self, root: &Path) -> PathBuf {
        let mut p = root.to_path_buf();
        for seg in self.0.split('/') {
            p.push(seg);
        }
        p
    }
}

impl fmt::Display for StoredPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Extension of a file name, without the dot; none for `name`, `.hidden` or `name.`.
pub fn extension(name: &str) -> Option<&str> {
    let (stem, ext) = name.rsplit_once('.')?;
    if stem.is_empty() || ext.is_empty() {
        None
    } else {
        Some(ext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<StoredPath, PathError> {
        StoredPath::parse(s, &PathRules::default())
    }

    #[test]
    fn ordinary_paths_accepted() {
        for ok in [
            "a/b.jpg",
            "4a771ac1-f0b2-4a4a-9700-f2a26fa2bb67/très cool.jpg",
            "x/100% +plus.txt",
            "x/..dots..",
            "x/.hidden",
            "noext",
        ] {
            assert!(p(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn dot_segments_rejected() {
        assert_eq!(p("a/../b"), Err(PathError::DotSegment));
        assert_eq!(p(".."), Err(PathError::DotSegment));
        assert_eq!(p("a/./b"), Err(PathError::DotSegment));
    }

    #[test]
    fn empty_and_absolute_segments_rejected() {
        assert_eq!(p(""), Err(PathError::Empty));
        assert_eq!(p("/etc/passwd"), Err(PathError::EmptySegment));
        assert_eq!(p("a//b"), Err(PathError::EmptySegment));
        assert_eq!(p("a/"), Err(PathError::EmptySegment));
    }

    #[test]
    fn nul_backslash_and_control_rejected() {
        assert_eq!(p("a/b\0c"), Err(PathError::BadCharacter));
        assert_eq!(p("a\\..\\b"), Err(PathError::BadCharacter));
        assert_eq!(p("a/b\nc"), Err(PathError::BadCharacter));
    }

    #[test]
    fn long_name_and_path_rejected() {
        let long = "x".repeat(256);
        assert_eq!(p(&format!("a/{long}")), Err(PathError::NameTooLong(255)));
        assert_eq!(
            p(&format!("{long}/a.txt")),
            Err(PathError::SegmentTooLong(255))
        );
        assert_eq!(
            p(&format!("a/{long}/b/a.txt")),
            Err(PathError::SegmentTooLong(255))
        );
        assert!(p(&format!("{}/a.txt", "x".repeat(255))).is_ok());
        let deep = "ab/".repeat(400) + "c";
        assert_eq!(p(&deep), Err(PathError::PathTooLong(1024)));
    }

    #[test]
    fn extension_lists_apply_case_insensitively() {
        let rules = PathRules {
            denied_extensions: vec!["exe".into()],
            ..PathRules::default()
        };
        assert_eq!(
            StoredPath::parse("a/x.EXE", &rules),
            Err(PathError::ExtensionNotAllowed)
        );
        assert!(StoredPath::parse("a/x.jpg", &rules).is_ok());
        let rules = PathRules {
            allowed_extensions: vec!["jpg".into(), "png".into()],
            ..PathRules::default()
        };
        assert!(StoredPath::parse("a/x.JPG", &rules).is_ok());
        assert_eq!(
            StoredPath::parse("a/x.gif", &rules),
            Err(PathError::ExtensionNotAllowed)
        );
        assert_eq!(
            StoredPath::parse("a/noext", &rules),
            Err(PathError::ExtensionNotAllowed)
        );
    }

    #[test]
    fn under_root_stays_under_root() {
        let sp = p("a/b/c.txt").unwrap();
        let full = sp.under(Path::new("/srv/files"));
        assert_eq!(full, PathBuf::from("/srv/files/a/b/c.txt"));
        assert_eq!(sp.file_name(), "c.txt");
    }
}
