//! `?limit=&offset=` on every list endpoint, checked the same way everywhere.
//!
//! A list without bounds is a denial of service waiting for a large table, so every list has a
//! maximum page size; a page outside it is a 400 problem, not a silently clamped answer.

use crate::Problem;

/// The page a list returns when the caller names none.
pub const DEFAULT_LIMIT: i64 = 100;

/// A checked page: `limit` within 1..=max, `offset` at least 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    pub limit: i64,
    pub offset: i64,
}

impl Paging {
    /// The page asked for (defaults: [`DEFAULT_LIMIT`] rows from the start), or a 400 problem
    /// saying what is allowed.
    pub fn checked(limit: Option<i64>, offset: Option<i64>, max: i64) -> Result<Self, Problem> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT.min(max));
        let offset = offset.unwrap_or(0);
        if !(1..=max).contains(&limit) || offset < 0 {
            return Err(Problem::bad_request(format!(
                "limit must be 1-{max} and offset at least 0"
            )));
        }
        Ok(Self { limit, offset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_checked_against_the_maximum() {
        assert_eq!(
            Paging::checked(None, None, 1000).unwrap(),
            Paging {
                limit: 100,
                offset: 0
            }
        );
        assert_eq!(Paging::checked(Some(7), Some(3), 10).unwrap().limit, 7);
        for (limit, offset) in [(Some(0), None), (Some(11), None), (None, Some(-1))] {
            let refused = Paging::checked(limit, offset, 10).unwrap_err();
            assert_eq!(refused.status, 400);
        }
    }
}
