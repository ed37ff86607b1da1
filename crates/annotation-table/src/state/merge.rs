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
    /// Merge-on-read: the deltas at these indexes are folded into the new delta file with the
    /// new rows; every other file stays, its replaced rows deleted by position.
    Delta { rewrite: Vec<usize> },
}

/// A partition is rewritten whole once its churn (rows deleted by position plus rows in
/// deltas) passes 1/`CHURN_DIVISOR` of its live rows. Below that a refresh writes only what
/// changed, and a reader skips or merges at most that share.
const CHURN_DIVISOR: u64 = 4;

/// The most delta files a partition keeps beside its base, so a reader opens at most this many
/// more files per partition.
pub(super) const MAX_DELTAS: usize = 3;

/// Which of a partition's files (given their row counts) is its base: the biggest, the first
/// of equals. `None` for no files.
fn base_of(rows: impl IntoIterator<Item = u64>) -> Option<usize> {
    rows.into_iter()
        .enumerate()
        .max_by_key(|(i, rows)| (*rows, usize::MAX - i))
        .map(|(i, _)| i)
}

/// Chooses how to write a partition of `files` (as [`FileShape`]s) and `new_rows` folded rows.
/// A rebuild, an empty partition, or one where churn would pass a quarter of its rows is
/// rewritten whole. Otherwise the new rows go to a new delta file and the earlier files stay,
/// their replaced rows deleted by position, except the smallest deltas while each holds no
/// more rows than the new delta already would (or while there would be more than
/// [`MAX_DELTAS`]): those are folded into it. So deltas merge like a binary counter: a row is
/// written again a logarithmic number of times before the partition is rewritten, where
/// folding the whole earlier delta into every new one wrote the accumulated churn again on
/// every refresh.
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
    let mut deltas: Vec<usize> = (0..files.len()).filter(|&i| i != base).collect();
    deltas.sort_by_key(|&i| (files[i].kept, i));
    let mut written = new_rows as u64;
    let mut rewrite = Vec::new();
    for (n, &i) in deltas.iter().enumerate() {
        // Keeping this one keeps every bigger one too, beside the new delta.
        let kept_deltas = deltas.len() - n + 1;
        if files[i].kept > written && kept_deltas <= MAX_DELTAS {
            break;
        }
        written += files[i].kept;
        rewrite.push(i);
    }
    let stays = |i: &usize| !rewrite.contains(i);
    let dead: u64 = (0..files.len()).filter(stays).map(|i| files[i].dead).sum();
    let in_deltas: u64 = written
        + deltas
            .iter()
            .filter(|i| stays(i))
            .map(|&i| files[i].kept)
            .sum::<u64>();
    let live = files.iter().map(|f| f.kept).sum::<u64>() + new_rows as u64;
    if (dead + in_deltas).saturating_mul(CHURN_DIVISOR) > live {
        return Merge::Rewrite;
    }
    rewrite.sort_unstable();
    Merge::Delta { rewrite }
}

#[cfg(test)]
mod tests {
    use super::{FileShape, MAX_DELTAS, Merge, merge_plan};

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
        // An earlier delta bigger than the new rows stays, its replaced row deleted by
        // position; one no bigger is folded into the new delta.
        assert_eq!(
            merge_plan(true, &[file(1000, 10, 2), file(20, 1, 1)], 4),
            Merge::Delta { rewrite: vec![] }
        );
        assert_eq!(
            merge_plan(true, &[file(1000, 10, 2), file(4, 1, 1)], 4),
            Merge::Delta { rewrite: vec![1] }
        );
    }

    #[test]
    fn deltas_merge_like_a_binary_counter_and_stay_few() {
        // The smallest deltas are folded while each is no bigger than what the new delta
        // holds so far: 4 new rows take the 3 and then the 6 (4 + 3 = 7 ≥ 6), not the 40.
        assert_eq!(
            merge_plan(
                true,
                &[
                    file(10_000, 0, 0),
                    file(40, 0, 0),
                    file(6, 0, 0),
                    file(3, 0, 0)
                ],
                4
            ),
            Merge::Delta {
                rewrite: vec![2, 3]
            }
        );
        // However big, the smallest deltas go once a partition would have more than
        // MAX_DELTAS of them.
        let many: Vec<_> = std::iter::once(file(100_000, 0, 0))
            .chain((0..MAX_DELTAS as u32).map(|i| file(1_000 * 3u64.pow(i), 0, 0)))
            .collect();
        assert_eq!(
            merge_plan(true, &many, 1),
            Merge::Delta { rewrite: vec![1] }
        );
        // A delta whose every row was replaced is dropped.
        assert_eq!(
            merge_plan(true, &[file(1000, 0, 0), file(50, 50, 2)], 0),
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
