//! Time-of-day conditions: days of the week and hour ranges in a time zone.
//!
//! ```yaml
//! time:
//!   days: mon-fri                 # or [mon, wed, fri], [sat-sun]; default every day
//!   hours: ["09:00-13:00", "14:00-18:00"]   # default the whole day; 22:00-06:00 wraps midnight
//!   timezone: America/Mexico_City # IANA name (daylight saving included), UTC, or -03:00
//! ```
//!
//! A time matches when its weekday is one of `days` and its time of day is
//! in one of `hours` (start included, end excluded), both in `timezone`.
//! A range that wraps midnight (`22:00-06:00`) is two pieces of the same
//! day: 00:00-06:00 and 22:00-24:00; `days` is the day the clock shows.

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use serde::Deserialize;

use super::spec::Words;

/// A `time:` condition as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSpec {
    /// `mon-fri`, `[mon, wed]`, `sat-sun` (default every day).
    #[serde(default)]
    pub days: Option<Words>,
    /// `09:00-18:00` or a list of such ranges (default the whole day).
    #[serde(default)]
    pub hours: Option<Words>,
    /// IANA zone name, `UTC` or a fixed offset (default: the `fallback` zone given to compile).
    #[serde(default)]
    pub timezone: Option<String>,
}

/// A compiled `time:` condition.
#[derive(Debug, Clone)]
pub struct Schedule {
    days: [bool; 7],
    /// Minutes of the day, `[start, end)`.
    ranges: Vec<(u16, u16)>,
    tz: TimeZone,
}

/// A problem in a `time:` condition: field (`days`, `hours`,
/// `timezone`), message, and the offending text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    /// `days`, `hours` or `timezone`.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
    /// The text.
    pub needle: String,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day(s: &str) -> Option<usize> {
    let l = s.trim().to_ascii_lowercase();
    DAY_NAMES.iter().position(|d| {
        l == *d || (l.len() > 3 && d.starts_with(&l[..3]) && full_name(d).starts_with(&l))
    })
}

fn full_name(d: &str) -> &'static str {
    match d {
        "mon" => "monday",
        "tue" => "tuesday",
        "wed" => "wednesday",
        "thu" => "thursday",
        "fri" => "friday",
        "sat" => "saturday",
        _ => "sunday",
    }
}

fn minute_of(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

impl Schedule {
    /// Compiles a `time:` condition; `fallback` is the zone used when none
    /// is given. Every problem is reported.
    pub fn compile(spec: &TimeSpec, fallback: &TimeZone) -> Result<Schedule, Vec<ScheduleError>> {
        let mut errs = Vec::new();
        let mut days = [spec.days.is_none(); 7];
        for item in spec.days.iter().flat_map(|w| &w.items) {
            let (a, b) = item.split_once('-').unwrap_or((item, item));
            match (day(a), day(b)) {
                (Some(a), Some(b)) => {
                    let mut i = a;
                    loop {
                        days[i] = true;
                        if i == b {
                            break;
                        }
                        i = (i + 1) % 7;
                    }
                }
                _ => errs.push(ScheduleError {
                    field: "days",
                    message: format!(
                        "{item:?} is not a day or a range of days (write mon, mon-fri, sat-sun)"
                    ),
                    needle: item.clone(),
                }),
            }
        }
        let mut ranges = Vec::new();
        match &spec.hours {
            None => ranges.push((0, 24 * 60)),
            Some(w) => {
                for item in &w.items {
                    let parsed = item
                        .split_once('-')
                        .and_then(|(a, b)| Some((minute_of(a)?, minute_of(b)?)));
                    match parsed {
                        Some((a, b)) if a == b => errs.push(ScheduleError {
                            field: "hours",
                            message: format!("{item:?} is an empty range"),
                            needle: item.clone(),
                        }),
                        Some((a, b)) if a < b => ranges.push((a, b)),
                        Some((a, b)) => {
                            ranges.push((a, 24 * 60));
                            ranges.push((0, b));
                        }
                        None => errs.push(ScheduleError {
                            field: "hours",
                            message: format!(
                                "{item:?} is not a range of hours (write 09:00-18:00)"
                            ),
                            needle: item.clone(),
                        }),
                    }
                }
            }
        }
        if spec.days.as_ref().is_some_and(|w| w.items.is_empty())
            || spec.hours.as_ref().is_some_and(|w| w.items.is_empty())
        {
            errs.push(ScheduleError {
                field: if spec.days.as_ref().is_some_and(|w| w.items.is_empty()) {
                    "days"
                } else {
                    "hours"
                },
                message: "an empty list matches nothing".into(),
                needle: String::new(),
            });
        }
        let tz = match &spec.timezone {
            None => Some(fallback.clone()),
            Some(z) => {
                let tz = crate::values::parse_zone(z);
                if tz.is_none() {
                    errs.push(ScheduleError {
                        field: "timezone",
                        message: format!("unknown time zone {z:?} (write an IANA name such as America/Mexico_City, UTC, or -03:00)"),
                        needle: z.clone(),
                    });
                }
                tz
            }
        };
        match tz {
            Some(tz) if errs.is_empty() => Ok(Schedule { days, ranges, tz }),
            _ => Err(errs),
        }
    }

    /// Whether the instant `at` is inside the schedule.
    pub fn matches(&self, at: jiff::Timestamp) -> bool {
        let z = jiff::ZonedDateTime::new(at, self.tz.clone());
        let d = match z.weekday() {
            Weekday::Monday => 0,
            Weekday::Tuesday => 1,
            Weekday::Wednesday => 2,
            Weekday::Thursday => 3,
            Weekday::Friday => 4,
            Weekday::Saturday => 5,
            Weekday::Sunday => 6,
        };
        let m = z.hour() as u16 * 60 + z.minute() as u16;
        self.days[d] && self.ranges.iter().any(|(a, b)| m >= *a && m < *b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(days: Option<&[&str]>, hours: Option<&[&str]>, tz: Option<&str>) -> TimeSpec {
        let w = |v: &[&str]| Words {
            items: v.iter().map(|s| s.to_string()).collect(),
            list: true,
        };
        TimeSpec {
            days: days.map(w),
            hours: hours.map(w),
            timezone: tz.map(str::to_string),
        }
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn business_hours_in_a_zone_with_daylight_saving() {
        let s = Schedule::compile(
            &spec(
                Some(&["mon-fri"]),
                Some(&["09:00-13:00", "14:00-18:00"]),
                Some("America/New_York"),
            ),
            &TimeZone::UTC,
        )
        .unwrap();
        // Wednesday 2026-07-15 09:30 EDT = 13:30 UTC.
        assert!(s.matches(at("2026-07-15T13:30:00Z")));
        // 13:30 EDT: lunch.
        assert!(!s.matches(at("2026-07-15T17:30:00Z")));
        // Winter: 09:30 EST = 14:30 UTC.
        assert!(s.matches(at("2026-01-14T14:30:00Z")));
        assert!(!s.matches(at("2026-01-14T13:30:00Z")));
        // Saturday.
        assert!(!s.matches(at("2026-07-18T14:00:00Z")));
    }

    #[test]
    fn wrapping_ranges_and_day_ranges() {
        let s = Schedule::compile(
            &spec(Some(&["fri-mon"]), Some(&["22:00-06:00"]), Some("-03:00")),
            &TimeZone::UTC,
        )
        .unwrap();
        // Saturday 23:00 at -03:00 = Sunday 02:00 UTC.
        assert!(s.matches(at("2026-07-19T02:00:00Z")));
        // Wednesday 23:00 local.
        assert!(!s.matches(at("2026-07-16T02:00:00Z")));
        // Monday 05:59 local.
        assert!(s.matches(at("2026-07-20T08:59:00Z")));
        assert!(!s.matches(at("2026-07-20T09:00:00Z")));
        let all = Schedule::compile(&TimeSpec::default(), &TimeZone::UTC).unwrap();
        assert!(all.matches(at("2026-07-20T09:00:00Z")));
        let full = Schedule::compile(
            &spec(Some(&["Saturday", "sun"]), None, None),
            &TimeZone::UTC,
        )
        .unwrap();
        assert!(full.matches(at("2026-07-18T00:00:00Z")));
        assert!(!full.matches(at("2026-07-17T23:59:00Z")));
    }

    #[test]
    fn errors_are_all_reported() {
        let e = Schedule::compile(
            &spec(
                Some(&["mon-fry"]),
                Some(&["9-18", "10:00-10:00", "25:00-26:00"]),
                Some("Mars/Olympus"),
            ),
            &TimeZone::UTC,
        )
        .unwrap_err();
        let fields: Vec<&str> = e.iter().map(|e| e.field).collect();
        assert_eq!(fields, vec!["days", "hours", "hours", "hours", "timezone"]);
        assert!(Schedule::compile(&spec(Some(&[]), None, None), &TimeZone::UTC).is_err());
    }
}
