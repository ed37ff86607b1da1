//! How a refresh writes one table's share of a partition: whole again (copy-on-write), as a
//! delta file beside the base with position deletes (merge-on-read), or not at all. Pure: it
//! sees row counts only, so the rule is tested here without files.

/// What [`merge_plan`] knows of a data file.
#[derive(Debug, Clone, Copy)]
pub(super) struct FileShape {
    /// Its rows.
    pub rows: u64,
    /// Those deleted once this refresh lands (before and now).
    pub dead: u64,
    /// Those kept as they are.
    pub kept: u64,
    /// Those this refresh replaces.
    pub hits: u64,
}

/// How a table's share of a partition is written.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Merge {
    /// Nothing of this table's share changed: its files stay as they are.
    Unchanged,
    /// Copy-on-write: every row again, every file replaced.
    Rewrite,
    /// Merge-on-read: the files at these indexes (all but the biggest: the earlier delta) are
    /// rewritten with the new rows into one delta file; the biggest stays, its replaced rows
    /// deleted by position.
    Delta { rewrite: Vec<usize> },
}

/// A partition is rewritten whole once its churn (rows deleted by position plus rows in the
/// delta) passes 1/`CHURN_DIVISOR` of its live rows. Below that a refresh writes only what
/// changed, and a reader skips or merges at most that share.
const CHURN_DIVISOR: u64 = 4;

/// Which of a partition's files (given their row counts) is its base: the biggest, the first
/// of equals. `None` for no files.
pub(super) fn base_of(rows: impl IntoIterator<Item = u64>) -> Option<usize> {
    rows.into_iter()
        .enumerate()
        .max_by_key(|(i, rows)| (*rows, usize::MAX - i))
        .map(|(i, _)| i)
}

/// Chooses how to write a partition of `files` (as [`FileShape`]s) and `new_rows` folded rows.
/// A rebuild, an empty partition, or one where churn would pass a quarter of its rows is
/// rewritten whole; otherwise the biggest file (the base) stays and gets position deletes, and
/// every other file (the earlier delta) is folded into the new delta with the new rows. So a
/// partition is at most a base, a delta and a delete file.
pub(super) fn merge_plan(incremental: bool, files: &[FileShape], new_rows: usize) -> Merge {
    let Some(base) = base_of(files.iter().map(|f| f.rows)) else {
        return Merge::Rewrite;
    };
    if !incremental {
        return Merge::Rewrite;
    }
    if new_rows == 0 && files.iter().all(|f| f.hits == 0) {
        return Merge::Unchanged;
    }
    let rewrite: Vec<usize> = (0..files.len()).filter(|&i| i != base).collect();
    let delta: u64 = rewrite.iter().map(|&i| files[i].kept).sum::<u64>() + new_rows as u64;
    let dead = files[base].dead;
    let live = files[base].rows.saturating_sub(dead) + delta;
    if (dead + delta).saturating_mul(CHURN_DIVISOR) > live {
        return Merge::Rewrite;
    }
    Merge::Delta { rewrite }
}

#[cfg(test)]
mod tests {
    use super::{FileShape, Merge, merge_plan};

    fn file(rows: u64, dead: u64, hits: u64) -> FileShape {
        FileShape {
            rows,
            dead,
            kept: rows - dead,
            hits,
        }
    }

    #[test]
    fn a_few_changes_in_a_big_partition_make_a_delta() {
        // 3 of 1,000 rows replaced, 3 new rows.
        assert_eq!(
            merge_plan(true, &[file(1000, 3, 3)], 3),
            Merge::Delta { rewrite: vec![] }
        );
        // The earlier delta (small) is folded into the new one; the base keeps its deletes.
        assert_eq!(
            merge_plan(true, &[file(1000, 10, 2), file(20, 1, 1)], 4),
            Merge::Delta { rewrite: vec![1] }
        );
    }

    #[test]
    fn churn_past_a_quarter_rewrites_the_partition() {
        assert_eq!(merge_plan(true, &[file(100, 20, 20)], 20), Merge::Rewrite);
        assert_eq!(
            merge_plan(true, &[file(1000, 100, 0), file(200, 0, 0)], 1),
            Merge::Rewrite
        );
    }

    #[test]
    fn rebuilds_and_empty_partitions_are_written_whole_and_untouched_shares_stay() {
        assert_eq!(merge_plan(false, &[file(1000, 0, 1000)], 5), Merge::Rewrite);
        assert_eq!(merge_plan(true, &[], 5), Merge::Rewrite);
        assert_eq!(merge_plan(true, &[file(1000, 7, 0)], 0), Merge::Unchanged);
    }
}
