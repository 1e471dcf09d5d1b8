//! Owner ids between a mount's own id space and the one it is served to.
//!
//! A mount keeps the ids its layers and upper records hold: a container's
//! own (root is 0). Usually they are served as they are. A rootless
//! container's filesystem mounted on the host (`strata mount CONTAINER` by
//! an ordinary user) is the exception: the container wrote its upper files
//! through its user namespace, so the host holds them under the user's id
//! and subordinate ids, while its layers say 0 for root. Served unchanged,
//! one mount showed both (a file the container's root made as the user's,
//! an image file of the same root as root's). With an [`IdMap`] the mount
//! translates where ids cross into it or out of it: host entries' owners
//! and callers' ids come in through the map, owners go out through it. Its
//! files then show the owners the host holds for the container's files,
//! and the user may change what the container's root may.
//!
//! Ids inside POSIX ACL values are not translated.

/// One range: `count` ids from `inside` are `outside` onwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// The uid and gid ranges of a user namespace mapping; empty maps every id
/// to itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

/// What an id without a mapping shows as (the kernel's overflow id).
pub const OVERFLOW_ID: u32 = 65534;

impl IdMap {
    pub fn is_identity(&self) -> bool {
        self.uids.is_empty() && self.gids.is_empty()
    }

    pub fn uid_out(&self, id: u32) -> u32 {
        out(&self.uids, id)
    }

    pub fn gid_out(&self, id: u32) -> u32 {
        out(&self.gids, id)
    }

    pub fn uid_in(&self, id: u32) -> u32 {
        inward(&self.uids, id)
    }

    pub fn gid_in(&self, id: u32) -> u32 {
        inward(&self.gids, id)
    }
}

fn out(ranges: &[IdRange], id: u32) -> u32 {
    translate(ranges, id, |r| (r.inside, r.outside))
}

fn inward(ranges: &[IdRange], id: u32) -> u32 {
    translate(ranges, id, |r| (r.outside, r.inside))
}

/// `id` through the range that holds it on the side `ends` names first,
/// to the other side; unchanged without ranges, OVERFLOW_ID outside them.
fn translate(ranges: &[IdRange], id: u32, ends: impl Fn(&IdRange) -> (u32, u32)) -> u32 {
    if ranges.is_empty() {
        return id;
    }
    ranges
        .iter()
        .find_map(|r| {
            let (from, to) = ends(r);
            (id >= from && id - from < r.count).then(|| to + (id - from))
        })
        .unwrap_or(OVERFLOW_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_both_ways_and_overflows_outside_the_ranges() {
        let r =
            vec![IdRange { inside: 0, outside: 1001, count: 1 }, IdRange { inside: 1, outside: 100000, count: 65536 }];
        let m = IdMap { uids: r.clone(), gids: r };
        assert_eq!((m.uid_out(0), m.uid_out(1), m.uid_out(123)), (1001, 100000, 100122));
        assert_eq!((m.uid_in(1001), m.uid_in(100122), m.gid_in(100000)), (0, 123, 1));
        assert_eq!((m.uid_out(4_000_000_000), m.uid_in(0), m.uid_in(1000)), (OVERFLOW_ID, OVERFLOW_ID, OVERFLOW_ID));
        let id = IdMap::default();
        assert!(id.is_identity());
        assert_eq!((id.uid_out(7), id.gid_in(4_000_000_000)), (7, 4_000_000_000));
    }
}
