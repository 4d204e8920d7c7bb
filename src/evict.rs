//! Eviction planning: which stored blobs to delete so the store stays under `[store] max_size`
//! and the data directory's filesystem keeps `[store] min_free` free.
//!
//! Everything here is pure: [`plan`] takes the blobs (size, last access, why a blob must be
//! kept), the limits and the current usage, and returns the blobs to delete, least recently used
//! first, with a tally of what was kept and why. [`fits`] is the cheap check made before a new
//! blob is kept. The rules:
//!
//! - A run starts when a limit is crossed: stored bytes (plus the blob about to be kept) over
//!   `max_size`, or free space under `min_free`.
//! - It evicts down to a low-water mark, so that runs are rare rather than one per install:
//!   stored bytes at most [`LOW_WATER_PERCENT`]% of `max_size` (room for the incoming blob
//!   included), and free space at least `min_free` plus a margin ([`Limits::free_target`]).
//! - Blobs marked [`Keep::Snapshot`] (files of a metadata snapshot in service, or still within
//!   the retention of a replaced one) or [`Keep::Pinned`] (a repo with `pinned = true`) are never
//!   chosen. When the rest is not enough the plan says how much is missing ([`Plan::short`]):
//!   the store then passes new downloads through instead of keeping them.
//!
//! Not here: reading the index, deciding what is protected, deleting anything (the `store`
//! module does all of that, in the crash-safe order: index rows first, then files).

use serde::Serialize;

use crate::hash::BlobId;

/// An eviction run for the cap brings stored bytes down to this share of `max_size`.
pub const LOW_WATER_PERCENT: u64 = 90;

/// Smallest margin above `min_free` an eviction run for free space aims at.
pub const FREE_MARGIN_FLOOR: u64 = 16 << 20;

/// The limits of `[store]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of stored blobs to keep; `None`: no cap.
    pub max_size: Option<u64>,
    /// Free bytes to leave on the data directory's filesystem.
    pub min_free: u64,
}

impl Limits {
    /// Stored bytes a run for the cap aims at: [`LOW_WATER_PERCENT`]% of `max_size`.
    pub fn cap_low_water(&self) -> Option<u64> {
        self.max_size
            .map(|m| m / 100 * LOW_WATER_PERCENT + m % 100 * LOW_WATER_PERCENT / 100)
    }

    /// Free bytes a run for free space aims at: `min_free` plus a tenth of it, at least
    /// [`FREE_MARGIN_FLOOR`].
    pub fn free_target(&self) -> u64 {
        self.min_free
            .saturating_add((self.min_free / 10).max(FREE_MARGIN_FLOOR))
    }
}

/// How full the store and its filesystem are now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of the blobs the index names.
    pub stored: u64,
    /// Free bytes on the data directory's filesystem (for unprivileged users); `None` when it
    /// could not be read, which never triggers a run.
    pub free: Option<u64>,
}

/// Which limit a store is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossed {
    MaxSize,
    MinFree,
}

/// Whether a new blob of `size` bytes may be kept without crossing a limit. The blob's bytes
/// are already on the filesystem (its download wrote them), so keeping it does not change the
/// free space; only the cap counts `size`.
pub fn fits(l: &Limits, u: &Usage, size: u64) -> bool {
    l.max_size
        .is_none_or(|m| u.stored.saturating_add(size) <= m)
        && u.free.is_none_or(|f| f >= l.min_free)
}

/// The limit the store is over now, if any (cap first).
pub fn crossed(l: &Limits, u: &Usage) -> Option<Crossed> {
    if l.max_size.is_some_and(|m| u.stored > m) {
        Some(Crossed::MaxSize)
    } else if u.free.is_some_and(|f| f < l.min_free) {
        Some(Crossed::MinFree)
    } else {
        None
    }
}

/// Bytes to evict so that `incoming` more bytes can be kept: 0 when no limit would be crossed,
/// else enough to reach the low-water mark of each crossed limit. A blob larger than the whole
/// cap can never be kept, so it is left out (it does not empty the store).
pub fn to_free(l: &Limits, u: &Usage, incoming: u64) -> u64 {
    let incoming = match l.max_size {
        Some(m) if incoming > m => 0,
        _ => incoming,
    };
    let want = u.stored.saturating_add(incoming);
    let cap = match (l.max_size, l.cap_low_water()) {
        (Some(m), Some(low)) if want > m => want - low,
        _ => 0,
    };
    let free = match u.free {
        Some(f) if f < l.min_free => l.free_target() - f,
        _ => 0,
    };
    cap.max(free)
}

/// Why a blob must stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Nothing protects it: least recently used goes first.
    Evictable,
    /// A file of a metadata snapshot in service (repomd.xml, a companion, anything it names),
    /// of a replaced snapshot within its retention, or metadata being assembled.
    Snapshot,
    /// Stored under a repo configured with `pinned = true`.
    Pinned,
}

/// One stored blob as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blob {
    pub id: BlobId,
    pub size: u64,
    /// Unix seconds of the last time it was served (or stored).
    pub last_access: u64,
    pub keep: Keep,
}

/// A count of files and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub files: u64,
    pub bytes: u64,
}

impl Tally {
    /// One more file of `bytes`.
    pub fn add_one(&mut self, bytes: u64) {
        self.files += 1;
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

/// What a plan keeps, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Kept {
    /// Files of snapshots in service (and within retention).
    pub snapshot: Tally,
    /// Files of pinned repos.
    pub pinned: Tally,
    /// Evictable files used more recently than what went (or all of them, when nothing had to go).
    pub recent: Tally,
}

/// Which blobs to delete, least recently used first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Bytes that had to go ([`to_free`]).
    pub need: u64,
    /// `(blob, size)`, least recently used first.
    pub evict: Vec<(BlobId, u64)>,
    pub evicted: Tally,
    pub kept: Kept,
}

impl Plan {
    /// Bytes still missing after every evictable blob went: more than 0 means everything left is
    /// protected, and new downloads are to be passed through.
    pub fn short(&self) -> u64 {
        self.need.saturating_sub(self.evicted.bytes)
    }
}

/// Plans an eviction run: the least recently used evictable blobs (ties: lower id first) until
/// [`to_free`]`(limits, usage, incoming)` bytes are covered, never a protected one.
pub fn plan(blobs: &[Blob], limits: &Limits, usage: &Usage, incoming: u64) -> Plan {
    let need = to_free(limits, usage, incoming);
    let mut kept = Kept::default();
    // 16 bytes per candidate, sorted in place: cheaper than sorting the blobs themselves.
    let mut order: Vec<(u64, u32)> = Vec::new();
    if need > 0 {
        order.reserve(blobs.len());
    }
    for (i, b) in blobs.iter().enumerate() {
        match b.keep {
            Keep::Snapshot => kept.snapshot.add_one(b.size),
            Keep::Pinned => kept.pinned.add_one(b.size),
            Keep::Evictable if need == 0 => kept.recent.add_one(b.size),
            // More than u32::MAX blobs would not fit the index of a node anyway; past that,
            // the rest count as recent.
            Keep::Evictable => match u32::try_from(i) {
                Ok(i) => order.push((b.last_access, i)),
                Err(_) => kept.recent.add_one(b.size),
            },
        }
    }
    // Ties by position, which is id order as the index lists blobs: deterministic.
    order.sort_unstable();
    let mut evict = Vec::new();
    let mut evicted = Tally::default();
    for (_, i) in order {
        let b = &blobs[i as usize];
        if evicted.bytes < need {
            evict.push((b.id, b.size));
            evicted.add_one(b.size);
        } else {
            kept.recent.add_one(b.size);
        }
    }
    Plan {
        need,
        evict,
        evicted,
        kept,
    }
}

/// The eviction policy of one node: the limits, the repos never evicted, and how long files of
/// a replaced snapshot stay protected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub limits: Limits,
    /// Names of repos configured with `pinned = true`.
    pub pinned: Vec<String>,
    /// `[metadata] old_snapshot_retention_secs`.
    pub retention_secs: u64,
}

/// Whether `"{repo}/{path}"` is repository metadata (under a `repodata/` directory): small,
/// needed whole by a snapshot, so always kept when downloaded even over the cap (the next run
/// evicts something else).
pub fn is_metadata_key(key: &str) -> bool {
    key.contains("/repodata/")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn blob(n: u8, size: u64, last_access: u64, keep: Keep) -> Blob {
        Blob {
            id: [n; 32],
            size,
            last_access,
            keep,
        }
    }

    fn cap(max: u64) -> Limits {
        Limits {
            max_size: Some(max),
            min_free: 0,
        }
    }

    fn used(stored: u64) -> Usage {
        Usage { stored, free: None }
    }

    fn ids(p: &Plan) -> Vec<u8> {
        p.evict.iter().map(|(id, _)| id[0]).collect()
    }

    #[test]
    fn nothing_goes_while_the_limits_hold() {
        let blobs = [
            blob(1, 10, 5, Keep::Evictable),
            blob(2, 10, 1, Keep::Snapshot),
        ];
        let p = plan(&blobs, &cap(100), &used(20), 80);
        assert_eq!(p.need, 0);
        assert!(p.evict.is_empty());
        assert_eq!(
            p.kept.recent,
            Tally {
                files: 1,
                bytes: 10
            }
        );
        assert_eq!(
            p.kept.snapshot,
            Tally {
                files: 1,
                bytes: 10
            }
        );
        assert!(fits(&cap(100), &used(20), 80));
        assert!(!fits(&cap(100), &used(20), 81));
        // No limits at all: nothing is ever over.
        let none = Limits::default();
        assert!(fits(&none, &used(u64::MAX), u64::MAX));
        assert_eq!(to_free(&none, &used(u64::MAX), u64::MAX), 0);
        assert_eq!(crossed(&none, &used(u64::MAX)), None);
    }

    #[test]
    fn least_recently_used_go_first_down_to_the_low_water_mark() {
        // 100 MiB cap, 100 MiB stored, 10 MiB coming: down to 90 MiB with the newcomer, so
        // 20 MiB must go.
        let blobs = [
            blob(1, 5 * MIB, 300, Keep::Evictable),
            blob(2, 10 * MIB, 100, Keep::Evictable),
            blob(3, 5 * MIB, 200, Keep::Evictable),
            blob(4, 30 * MIB, 50, Keep::Evictable),
            blob(5, 50 * MIB, 400, Keep::Evictable),
        ];
        let p = plan(&blobs, &cap(100 * MIB), &used(100 * MIB), 10 * MIB);
        assert_eq!(p.need, 20 * MIB);
        // The oldest (30 MiB at t=50) alone covers it.
        assert_eq!(ids(&p), vec![4]);
        assert_eq!(p.short(), 0);
        assert_eq!(p.kept.recent.files, 4);
        // Without the big old one: 10 (t=100), then 5 (t=200), then 5 (t=300).
        let p = plan(&blobs[..3], &cap(100 * MIB), &used(100 * MIB), 10 * MIB);
        assert_eq!(ids(&p), vec![2, 3, 1]);
        assert_eq!(p.evicted.bytes, 20 * MIB);
        assert_eq!(p.short(), 0);
    }

    #[test]
    fn protected_blobs_never_go_and_a_shortfall_is_reported() {
        let blobs = [
            blob(1, 40 * MIB, 1, Keep::Snapshot),
            blob(2, 40 * MIB, 2, Keep::Pinned),
            blob(3, 10 * MIB, 3, Keep::Evictable),
            blob(4, 20 * MIB, 9, Keep::Pinned),
        ];
        let p = plan(&blobs, &cap(100 * MIB), &used(110 * MIB), 5 * MIB);
        assert_eq!(ids(&p), vec![3]);
        assert_eq!(p.need, 25 * MIB);
        assert_eq!(p.short(), 15 * MIB);
        assert_eq!(
            p.kept.snapshot,
            Tally {
                files: 1,
                bytes: 40 * MIB
            }
        );
        assert_eq!(
            p.kept.pinned,
            Tally {
                files: 2,
                bytes: 60 * MIB
            }
        );
        assert_eq!(p.kept.recent, Tally::default());
    }

    #[test]
    fn free_space_triggers_its_own_run_with_a_margin() {
        let l = Limits {
            max_size: None,
            min_free: 1 << 30,
        };
        assert_eq!(l.free_target(), (1 << 30) + (1 << 30) / 10);
        let small = Limits {
            max_size: None,
            min_free: 10 * MIB,
        };
        assert_eq!(small.free_target(), 10 * MIB + FREE_MARGIN_FLOOR);
        let u = Usage {
            stored: 500 * MIB,
            free: Some(900 * MIB),
        };
        assert_eq!(crossed(&l, &u), Some(Crossed::MinFree));
        assert!(!fits(&l, &u, 1));
        assert_eq!(to_free(&l, &u, 0), l.free_target() - 900 * MIB);
        let blobs: Vec<Blob> = (0..10)
            .map(|i| blob(i, 50 * MIB, u64::from(i), Keep::Evictable))
            .collect();
        let p = plan(&blobs, &l, &u, 0);
        // 1126.4 MiB - 900 MiB = 226.4 MiB: five blobs of 50 MiB, oldest first.
        assert_eq!(ids(&p), vec![0, 1, 2, 3, 4]);
        // Enough free space: no run, whatever is stored.
        let u = Usage {
            stored: u64::MAX / 2,
            free: Some(2 << 30),
        };
        assert_eq!(crossed(&l, &u), None);
        assert!(plan(&blobs, &l, &u, 0).evict.is_empty());
    }

    #[test]
    fn both_limits_take_the_larger_need() {
        let l = Limits {
            max_size: Some(100 * MIB),
            min_free: 100 * MIB,
        };
        let u = Usage {
            stored: 101 * MIB,
            free: Some(50 * MIB),
        };
        assert_eq!(crossed(&l, &u), Some(Crossed::MaxSize));
        let cap_need = 101 * MIB - 90 * MIB;
        let free_need = l.free_target() - 50 * MIB;
        assert_eq!(to_free(&l, &u, 0), cap_need.max(free_need));
    }

    #[test]
    fn a_blob_larger_than_the_cap_does_not_empty_the_store() {
        let blobs = [blob(1, 10 * MIB, 1, Keep::Evictable)];
        let p = plan(&blobs, &cap(50 * MIB), &used(10 * MIB), 60 * MIB);
        assert!(p.evict.is_empty(), "{p:?}");
        assert!(!fits(&cap(50 * MIB), &used(10 * MIB), 60 * MIB));
    }

    #[test]
    fn ties_go_by_position_and_sums_saturate() {
        let blobs = [
            blob(7, 1, 5, Keep::Evictable),
            blob(3, 1, 5, Keep::Evictable),
            blob(9, u64::MAX, 5, Keep::Evictable),
        ];
        let p = plan(&blobs, &cap(10), &used(u64::MAX), u64::MAX);
        assert_eq!(ids(&p), vec![7, 3, 9]);
        assert_eq!(p.evicted.bytes, u64::MAX);
        assert_eq!(
            cap(u64::MAX).cap_low_water(),
            Some(u64::MAX / 100 * 90 + 13)
        );
        assert_eq!(cap(1000).cap_low_water(), Some(900));
        assert_eq!(cap(7).cap_low_water(), Some(6));
    }

    #[test]
    fn metadata_keys() {
        assert!(is_metadata_key(
            "almalinux/9/BaseOS/x86_64/os/repodata/abc-primary.xml.gz"
        ));
        assert!(is_metadata_key("test/repodata/repomd.xml"));
        assert!(!is_metadata_key("test/Packages/a.rpm"));
        assert!(!is_metadata_key("test/repodata.rpm"));
    }
}
