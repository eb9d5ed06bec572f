//! Config errors: each names the key it is about and, when it came from a file, the line.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A key is unknown, has the wrong type or an invalid value, or contradicts another key.
    #[error("{0}")]
    Invalid(Invalid),
    /// Several errors found in one pass.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Many(Vec<Invalid>),
}

/// One invalid key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The dotted key, e.g. `policies.default.rate` or `routes[1].upstream`.
    pub key: String,
    /// 1-based line in the file, when the value came from one.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl ConfigError {
    /// The individual key errors, for callers (and tests) that want to inspect them.
    pub fn invalid(&self) -> &[Invalid] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid(one) => std::slice::from_ref(one),
            ConfigError::Many(all) => all,
        }
    }
}

/// Collects key errors while a raw file is checked, resolving spans to line numbers.
pub(crate) struct Errors<'a> {
    source: &'a str,
    found: Vec<Invalid>,
}

impl<'a> Errors<'a> {
    pub(crate) fn new(source: &'a str) -> Self {
        Errors {
            source,
            found: Vec::new(),
        }
    }

    /// Records an error about `key`, located by the span of its value (`0..0` when defaulted).
    pub(crate) fn push(
        &mut self,
        key: impl Into<String>,
        span: Range<usize>,
        message: impl Into<String>,
    ) {
        let line = line_of(self.source, span);
        self.found.push(Invalid {
            key: key.into(),
            line,
            message: message.into(),
        });
    }

    /// A duration that must not be zero (a zero timeout would refuse every request): its value.
    pub(crate) fn positive(
        &mut self,
        key: &str,
        d: &toml::Spanned<super::Dur>,
    ) -> std::time::Duration {
        if d.get_ref().0.is_zero() {
            self.push(key, d.span(), "must be more than 0");
        }
        d.get_ref().0
    }

    /// The errors found, in the order of the file's lines (those about a key the file does
    /// not set come last).
    pub(crate) fn finish(mut self) -> Result<(), ConfigError> {
        self.found.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        match self.found.len() {
            0 => Ok(()),
            1 => Err(ConfigError::Invalid(self.found.remove(0))),
            _ => Err(ConfigError::Many(self.found)),
        }
    }
}

/// The 1-based line where `span` starts; `None` for the empty span of a default value.
pub(crate) fn line_of(source: &str, span: Range<usize>) -> Option<usize> {
    if span == (0..0) || span.start > source.len() {
        return None;
    }
    Some(source[..span.start].bytes().filter(|&b| b == b'\n').count() + 1)
}
