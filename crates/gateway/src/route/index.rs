//! Which routes can take a request, found without trying every route in turn.
//!
//! The route table is first match in file order. A table that names hundreds of services, a
//! route each, would otherwise try hundreds of routes on every request: `bench/gateway-scale.sh`
//! counted 56,780 instructions a request with 520 routes against 23,695 with 21, nearly all of
//! the difference in the scan. The index keeps the order and only narrows the candidates:
//!
//! - an exact path route is found by the whole path;
//! - a prefix `p` can match a path only where the path is cut at one of its boundaries: its
//!   end, just before a `/`, or just after one (when `p` itself ends with `/`); a lookup asks
//!   the map of prefixes for each such cut, a handful for a usual path;
//! - a regex route is a candidate for every path.
//!
//! Each candidate is then tried with the route's own `matches` (method, host, headers and the
//! path again), and the one earliest in the file wins: the answer is the linear scan's by
//! construction, since the index only skips routes whose path cannot match. Small tables keep
//! the scan ([`LINEAR_UP_TO`]): a few comparisons cost less than hashing each cut.

use std::collections::HashMap;

use foldhash::fast::RandomState;

/// Up to this many routes a request tries them in turn; beyond, it asks the index.
pub const LINEAR_UP_TO: usize = 16;

/// What a route's path can match, as the index files it.
#[derive(Debug, Clone, Copy)]
pub enum PathKey<'a> {
    /// Only this path.
    Exact(&'a str),
    /// Paths under this prefix.
    Prefix(&'a str),
    /// Any path (a pattern the index cannot narrow).
    Any,
}

/// The routes of a table by what their path can match (positions in the table, ascending).
#[derive(Debug, Default, Clone)]
pub struct RouteIndex {
    exact: HashMap<Box<str>, Vec<usize>, RandomState>,
    prefix: HashMap<Box<str>, Vec<usize>, RandomState>,
    /// Regex routes, tried for every path.
    every_path: Vec<usize>,
}

impl RouteIndex {
    /// The index of a table whose routes match these paths, in file order.
    pub fn new<'a>(paths: impl IntoIterator<Item = PathKey<'a>>) -> Self {
        let mut index = Self::default();
        for (position, path) in paths.into_iter().enumerate() {
            match path {
                PathKey::Exact(exact) => {
                    index.exact.entry(exact.into()).or_default().push(position)
                }
                PathKey::Prefix(prefix) => index
                    .prefix
                    .entry(prefix.into())
                    .or_default()
                    .push(position),
                PathKey::Any => index.every_path.push(position),
            }
        }
        index
    }

    /// The earliest route (by position) whose path may match `path` and for which `matches`
    /// says yes; `matches` gets each candidate's position and decides on everything.
    pub fn first(&self, path: &str, mut matches: impl FnMut(usize) -> bool) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut consider = |candidates: &[usize]| {
            for &position in candidates {
                // Ascending within one list: nothing after a match or the best so far can win.
                if best.is_some_and(|b| position >= b) {
                    break;
                }
                if matches(position) {
                    best = Some(position);
                    break;
                }
            }
        };
        if let Some(found) = self.exact.get(path) {
            consider(found);
        }
        if !self.prefix.is_empty() {
            for cut in cuts(path) {
                if let Some(found) = self.prefix.get(&path[..cut]) {
                    consider(found);
                }
            }
        }
        consider(&self.every_path);
        best
    }
}

/// Where a prefix route's prefix can end in `path`: 0 (the empty prefix), the end, and before and
/// after every `/`. Each cut is on a character boundary (`/` is one byte in UTF-8).
fn cuts(path: &str) -> impl Iterator<Item = usize> + '_ {
    let slashes = path
        .bytes()
        .enumerate()
        .filter(|&(_, b)| b == b'/')
        .map(|(i, _)| i);
    std::iter::once(0)
        .chain(slashes.flat_map(|i| [i, i + 1]))
        .chain(std::iter::once(path.len()))
        .scan(None, |last, cut| {
            // Consecutive duplicates (`//`, a trailing `/`, a leading one) are asked once.
            let repeat = *last == Some(cut);
            *last = Some(cut);
            Some((!repeat).then_some(cut))
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_are_the_ends_and_both_sides_of_each_slash() {
        assert_eq!(
            cuts("/api/catalog").collect::<Vec<_>>(),
            vec![0, 1, 4, 5, 12]
        );
        assert_eq!(cuts("/").collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(
            cuts("/a//b/").collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5, 6]
        );
        assert_eq!(cuts("").collect::<Vec<_>>(), vec![0]);
    }
}
