//! What the fuzz targets share: a reader of Structured Field lists (RFC 8941) to check the
//! rate-limit headers with, header maps built from fuzz input, and a way to see the input a
//! target made of a file.

pub mod headers;
pub mod sf;

/// Prints `input` when `SLUICE_FUZZ_SHOW` is set: what a target made of a crashing file,
/// to write the regression test from (`SLUICE_FUZZ_SHOW=1 fuzz/run TARGET FILE`).
pub fn show(input: &impl std::fmt::Debug) {
    if std::env::var_os("SLUICE_FUZZ_SHOW").is_some() {
        eprintln!("{input:#?}");
    }
}
