//! The one rule for "this run is under CI", used by the harness, the server starters and (in
//! shell) by `deploy/check.sh`.
//!
//! CI systems announce themselves with `CI`, but not all with the same value: most say `true`,
//! some `1`, and a developer who wants a local run to behave like a laptop's says `CI=false` or
//! `CI=0` (or leaves it empty). So: set, and not empty, `0` or `false`.

use std::ffi::OsStr;

/// Whether `CI` says this run is under CI. Under CI nothing a test needs may be missing: a test
/// whose server is not installed fails instead of being reported ignored.
pub fn under_ci() -> bool {
    ci_value_means_ci(std::env::var_os("CI").as_deref())
}

/// The rule itself, on `CI`'s value (`None`: not set).
pub(crate) fn ci_value_means_ci(value: Option<&OsStr>) -> bool {
    let Some(value) = value else {
        return false;
    };
    let value = value.to_string_lossy();
    let value = value.trim();
    !(value.is_empty() || value == "0" || value.eq_ignore_ascii_case("false"))
}

#[cfg(test)]
mod tests {
    use super::ci_value_means_ci;
    use std::ffi::OsStr;

    #[test]
    fn any_value_but_empty_zero_or_false_means_ci() {
        for value in ["true", "1", "yes", "TRUE", "github-actions"] {
            assert!(ci_value_means_ci(Some(OsStr::new(value))), "{value}");
        }
        for value in ["", " ", "0", "false", "False", "FALSE"] {
            assert!(!ci_value_means_ci(Some(OsStr::new(value))), "{value:?}");
        }
        assert!(!ci_value_means_ci(None), "unset");
    }
}
