//! Which snapshots a retention policy keeps (`freezer forget`).
//!
//! The rules are restic's: walking from the newest snapshot back, `--keep-last N` keeps
//! the N newest; `--keep-daily N` keeps the newest snapshot of each of the N most recent
//! days that have one; `--keep-weekly` the same per ISO week, `--keep-monthly` per
//! calendar month. A snapshot is kept if any rule keeps it. Days are UTC, taken from the
//! snapshot id (its creation time), so no record needs to be read.

use crate::format::days_from_civil;
use serde::Serialize;

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Policy {
    pub last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.last == 0 && self.daily == 0 && self.weekly == 0 && self.monthly == 0
    }
}

/// The date of a snapshot id `YYYYMMDDTHHMMSSZ-…`: (year, month, day).
pub fn id_date(id: &str) -> Option<(i64, u32, u32)> {
    let d = id.get(..8)?;
    if !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((
        d[..4].parse().ok()?,
        d[4..6].parse().ok()?,
        d[6..8].parse().ok()?,
    ))
}

/// The ISO 8601 week of a date: (week-based year, week number).
pub fn iso_week(y: i64, m: u32, d: u32) -> (i64, u32) {
    let days = days_from_civil(y, m, d);
    // 1970-01-01 was a Thursday; ISO weekday 1 = Monday.
    let weekday = (days + 3).rem_euclid(7) + 1;
    // The Thursday of this week decides the year.
    let thursday = days - weekday + 4;
    let ty = {
        // Year of `thursday`: find it from its civil date.
        let mut ty = y;
        if thursday < days_from_civil(y, 1, 1) {
            ty -= 1;
        } else if thursday >= days_from_civil(y + 1, 1, 1) {
            ty += 1;
        }
        ty
    };
    let week = (thursday - days_from_civil(ty, 1, 1)) / 7 + 1;
    (ty, week as u32)
}

/// Decides for each snapshot, given as (id, creation time in RFC 3339 with nanoseconds)
/// in any order, whether to keep it, with the rules that keep it. Returns (id, reasons)
/// with reasons empty for snapshots to forget, newest first by creation time (which also
/// orders snapshots taken within one second). Ids whose time cannot be read are kept.
pub fn apply(policy: &Policy, snapshots: &[(String, String)]) -> Vec<(String, Vec<&'static str>)> {
    let mut sorted: Vec<&(String, String)> = snapshots.iter().collect();
    sorted.sort_by(|a, b| (&b.1, &b.0).cmp(&(&a.1, &a.0)));
    let mut out: Vec<(String, Vec<&'static str>)> = sorted
        .iter()
        .map(|(id, _)| (id.clone(), Vec::new()))
        .collect();
    type Bucket = fn(&str) -> Option<String>;
    let rules: [(&'static str, u32, Bucket); 4] = [
        ("last", policy.last, |id| Some(id.to_string())),
        ("daily", policy.daily, |id| {
            id_date(id).map(|(y, m, d)| format!("{y}-{m}-{d}"))
        }),
        ("weekly", policy.weekly, |id| {
            id_date(id).map(|(y, m, d)| format!("{:?}", iso_week(y, m, d)))
        }),
        ("monthly", policy.monthly, |id| {
            id_date(id).map(|(y, m, _)| format!("{y}-{m}"))
        }),
    ];
    for (name, n, bucket) in rules {
        let mut kept = 0;
        let mut last: Option<String> = None;
        for (id, reasons) in out.iter_mut() {
            if kept >= n {
                break;
            }
            let Some(b) = bucket(id) else { continue };
            if last.as_ref() != Some(&b) {
                reasons.push(name);
                kept += 1;
                last = Some(b);
            }
        }
    }
    for (id, reasons) in out.iter_mut() {
        if id_date(id).is_none() && reasons.is_empty() {
            reasons.push("unreadable time");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_weeks() {
        assert_eq!(iso_week(2026, 11, 22), (2026, 47)); // a Sunday
        assert_eq!(iso_week(2026, 11, 23), (2026, 48)); // the Monday after
        assert_eq!(iso_week(2021, 1, 3), (2020, 53));
        assert_eq!(iso_week(2024, 12, 30), (2025, 1));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }
}
