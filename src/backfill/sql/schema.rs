//! Which columns of the CDR table hold which CDR field, and the query that
//! reads them.
//!
//! The drivers write a column per CDR variable, named after it
//! (`cdr_adaptive_odbc`, `cdr_pgsql` and `cdr_mysql` all look the table's
//! columns up by name): Asterisk's own schema (`contrib/ast-db-manage`,
//! used by `cdr_adaptive_odbc`) has `start`, `answer`, `end`; the classic
//! `cdr_mysql` / FreePBX table has `calldate` (the start) and no `answer` or
//! `end` (derived from `duration` and `billsec`, as for a CSV export).
//! `uniqueid`, `userfield`, `linkedid`, `sequence` are used when present.
//! Names match case-insensitively; `--cdr-column FIELD=COLUMN` maps a field
//! to another column. `src`, `dst`, `channel` and a start column are
//! required.
//!
//! Every value is read as text (`CAST(… AS CHAR)`, `…::text`) and parsed
//! exactly as a CSV row is, so a call gives the same record from either
//! source. A PostgreSQL `timestamp with time zone` column is read as its
//! wall-clock time in the session's time zone (the server's `TimeZone`, or
//! `?options=-c%20TimeZone%3DEurope/Madrid` in the URL): make that the
//! zone `--cdr-timezone` names.

use super::connect::DbKind;

/// The CDR fields, in the order the query selects them.
pub const FIELDS: [&str; 19] = [
    "accountcode",
    "src",
    "dst",
    "dcontext",
    "clid",
    "channel",
    "dstchannel",
    "lastapp",
    "lastdata",
    "start",
    "answer",
    "end",
    "duration",
    "billsec",
    "disposition",
    "uniqueid",
    "userfield",
    "linkedid",
    "sequence",
];

/// Fields a table must have.
const REQUIRED: [&str; 4] = ["src", "dst", "channel", "start"];

/// Column names tried for a field, in order.
fn defaults(field: &str) -> &'static [&'static str] {
    match field {
        "start" => &["start", "calldate"],
        "accountcode" => &["accountcode"],
        "src" => &["src"],
        "dst" => &["dst"],
        "dcontext" => &["dcontext"],
        "clid" => &["clid"],
        "channel" => &["channel"],
        "dstchannel" => &["dstchannel"],
        "lastapp" => &["lastapp"],
        "lastdata" => &["lastdata"],
        "answer" => &["answer"],
        "end" => &["end"],
        "duration" => &["duration"],
        "billsec" => &["billsec"],
        "disposition" => &["disposition"],
        "uniqueid" => &["uniqueid"],
        "userfield" => &["userfield"],
        "linkedid" => &["linkedid"],
        "sequence" => &["sequence"],
        _ => &[],
    }
}

/// Whether `s` is a plain SQL identifier (letters, digits, `_`, `$`; not
/// starting with a digit; at most 63 bytes): the only names callhook puts
/// into a query.
pub fn is_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && !b[0].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'$')
}

/// A table name: `cdr` or `schema.cdr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// The schema (PostgreSQL) or database (MySQL), when given.
    pub schema: Option<String>,
    /// The table.
    pub table: String,
}

impl TableName {
    /// Parses `cdr` or `schema.cdr`.
    pub fn parse(s: &str) -> Result<TableName, String> {
        let s = s.trim();
        let (schema, table) = match s.split_once('.') {
            Some((a, b)) => (Some(a.to_string()), b.to_string()),
            None => (None, s.to_string()),
        };
        let ok = is_identifier(&table) && schema.as_deref().is_none_or(is_identifier);
        if !ok {
            return Err(format!(
                "--cdr-table {s:?}: write a table name such as cdr or asterisk.cdr (letters, digits, _)"
            ));
        }
        Ok(TableName { schema, table })
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.table),
            None => f.write_str(&self.table),
        }
    }
}

/// `FIELD=COLUMN` overrides (`--cdr-column src=source`), checked.
pub fn parse_overrides(items: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for it in items {
        let Some((f, c)) = it.split_once('=') else {
            return Err(format!(
                "--cdr-column {it:?}: write FIELD=COLUMN, e.g. start=calldate"
            ));
        };
        let f = f.trim().to_ascii_lowercase();
        let f = if f == "calldate" {
            "start".to_string()
        } else {
            f
        };
        let c = c.trim().to_string();
        if !FIELDS.contains(&f.as_str()) {
            return Err(format!(
                "--cdr-column {it:?}: {f:?} is not a CDR field (one of {})",
                FIELDS.join(", ")
            ));
        }
        if !is_identifier(&c) {
            return Err(format!(
                "--cdr-column {it:?}: {c:?} is not a plain column name (letters, digits, _)"
            ));
        }
        out.retain(|(g, _)| *g != f);
        out.push((f, c));
    }
    Ok(out)
}

/// One column of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumn {
    /// Its name as the database spells it.
    pub name: String,
    /// Its type (`information_schema.columns.data_type`, lower case).
    pub data_type: String,
}

/// The columns a run reads: per field in [`FIELDS`] order, the column (if
/// the table has one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// `(field, column)` for every field the table has.
    pub columns: Vec<(&'static str, TableColumn)>,
}

impl Mapping {
    /// Matches the table's columns to the fields (see the module docs).
    pub fn new(
        table: &TableName,
        have: &[TableColumn],
        overrides: &[(String, String)],
    ) -> Result<Mapping, String> {
        if have.is_empty() {
            return Err(format!(
                "table {table} not found (or it has no columns this user may read)"
            ));
        }
        let find = |name: &str| have.iter().find(|c| c.name.eq_ignore_ascii_case(name));
        let mut columns = Vec::new();
        let mut problems = Vec::new();
        for field in FIELDS {
            let col = match overrides.iter().find(|(f, _)| f == field) {
                Some((_, c)) => match find(c) {
                    Some(col) => Some(col),
                    None => {
                        problems.push(format!(
                            "--cdr-column {field}={c}: table {table} has no column {c}"
                        ));
                        None
                    }
                },
                None => defaults(field).iter().find_map(|n| find(n)),
            };
            if let Some(col) = col {
                columns.push((field, col.clone()));
            } else if REQUIRED.contains(&field) && !overrides.iter().any(|(f, _)| f == field) {
                problems.push(format!(
                    "table {table} has no {} column (map one with --cdr-column {field}=COLUMN)",
                    defaults(field).join(" or ")
                ));
            }
        }
        if !problems.is_empty() {
            let names: Vec<&str> = have.iter().map(|c| c.name.as_str()).collect();
            return Err(format!(
                "{}; its columns: {}",
                problems.join("; "),
                names.join(", ")
            ));
        }
        Ok(Mapping { columns })
    }

    /// The column of `field`.
    pub fn column(&self, field: &str) -> Option<&TableColumn> {
        self.columns
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, c)| c)
    }

    /// The fields read, in query order.
    pub fn fields(&self) -> Vec<String> {
        self.columns.iter().map(|(f, _)| f.to_string()).collect()
    }
}

fn quote(kind: DbKind, ident: &str) -> String {
    match kind {
        DbKind::MySql => format!("`{ident}`"),
        DbKind::Postgres => format!("\"{ident}\""),
    }
}

fn is_timestamptz(t: &str) -> bool {
    t == "timestamp with time zone" || t == "timestamptz"
}

/// The query that streams the rows from a `(start, uniqueid)` cursor on,
/// in that order (then `sequence`): `SELECT <fields as text> FROM <table>
/// WHERE start >= ? AND (start > ? OR uniqueid >= ?) ORDER BY …`. Its
/// parameters are, in order, the cursor's start text twice and its
/// uniqueid (only the start once without a uniqueid column). Names are
/// checked identifiers, quoted.
pub fn select(kind: DbKind, table: &TableName, m: &Mapping) -> String {
    let q = |s: &str| quote(kind, s);
    let text = |c: &TableColumn| match kind {
        DbKind::MySql => format!("CAST({} AS CHAR)", q(&c.name)),
        DbKind::Postgres if is_timestamptz(&c.data_type) => {
            format!("(({})::timestamp)::text", q(&c.name))
        }
        DbKind::Postgres => format!("({})::text", q(&c.name)),
    };
    let cols: Vec<String> = m.columns.iter().map(|(_, c)| text(c)).collect();
    let from = match &table.schema {
        Some(s) => format!("{}.{}", q(s), q(&table.table)),
        None => q(&table.table),
    };
    let start = m.column("start").map(|c| (q(&c.name), c.data_type.clone()));
    let (start, start_type) = start.unwrap_or_else(|| ("1".into(), String::new()));
    let param = |n: usize| match kind {
        DbKind::MySql => "?".to_string(),
        DbKind::Postgres => {
            let ty = if start_type.is_empty() {
                "text".to_string()
            } else {
                start_type.clone()
            };
            format!("CAST(${n} AS {ty})")
        }
    };
    let uid = m.column("uniqueid").map(|c| match kind {
        DbKind::MySql => format!("COALESCE({}, '')", q(&c.name)),
        DbKind::Postgres => format!("COALESCE(({})::text, '')", q(&c.name)),
    });
    let mut sql = format!(
        "SELECT {} FROM {from} WHERE {start} >= {}",
        cols.join(", "),
        param(1)
    );
    let mut order = vec![start.clone()];
    if let Some(u) = &uid {
        let p3 = match kind {
            DbKind::MySql => "?".to_string(),
            DbKind::Postgres => "$2".to_string(),
        };
        let p2 = match kind {
            DbKind::MySql => param(2),
            DbKind::Postgres => param(1),
        };
        sql.push_str(&format!(" AND ({start} > {p2} OR {u} >= {p3})"));
        order.push(u.clone());
    }
    if let Some(s) = m.column("sequence") {
        order.push(q(&s.name));
    }
    sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
    sql
}

/// The query listing the table's columns (parameters: schema or NULL,
/// table).
pub fn columns_query(kind: DbKind) -> &'static str {
    match kind {
        DbKind::MySql => {
            "SELECT CAST(COLUMN_NAME AS CHAR), CAST(LOWER(DATA_TYPE) AS CHAR) \
             FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION"
        }
        DbKind::Postgres => {
            "SELECT column_name::text, lower(data_type::text) \
             FROM information_schema.columns \
             WHERE table_schema = COALESCE($1::text, current_schema()::text) AND table_name = $2 \
             ORDER BY ordinal_position"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<TableColumn> {
        names
            .iter()
            .map(|n| TableColumn {
                name: n.to_string(),
                data_type: if *n == "calldate" || *n == "start" {
                    "timestamp without time zone".into()
                } else {
                    "character varying".into()
                },
            })
            .collect()
    }

    const CLASSIC: &[&str] = &[
        "calldate",
        "clid",
        "src",
        "dst",
        "dcontext",
        "channel",
        "dstchannel",
        "lastapp",
        "lastdata",
        "duration",
        "billsec",
        "disposition",
        "amaflags",
        "accountcode",
        "uniqueid",
        "userfield",
        "did",
        "recordingfile",
    ];

    #[test]
    fn classic_and_asterisk_schemas_map_by_name() {
        let t = TableName::parse("cdr").unwrap();
        let m = Mapping::new(&t, &cols(CLASSIC), &[]).unwrap();
        assert_eq!(m.column("start").unwrap().name, "calldate");
        assert!(m.column("answer").is_none() && m.column("linkedid").is_none());
        assert_eq!(m.fields().len(), 15);
        let upper: Vec<String> = CLASSIC.iter().map(|c| c.to_ascii_uppercase()).collect();
        let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
        assert!(Mapping::new(&t, &cols(&upper), &[]).is_ok());
    }

    #[test]
    fn overrides_and_missing_columns() {
        let t = TableName::parse("asterisk.calls").unwrap();
        let have = cols(&["begin", "source", "dst", "channel"]);
        let e = Mapping::new(&t, &have, &[]).unwrap_err();
        assert!(
            e.contains("no src column") && e.contains("start or calldate"),
            "{e}"
        );
        assert!(e.contains("its columns: begin, source"), "{e}");
        let o = parse_overrides(&["src=source".into(), "calldate=begin".into()]).unwrap();
        let m = Mapping::new(&t, &have, &o).unwrap();
        assert_eq!(m.column("src").unwrap().name, "source");
        assert_eq!(m.column("start").unwrap().name, "begin");
        let e =
            Mapping::new(&t, &have, &parse_overrides(&["src=nope".into()]).unwrap()).unwrap_err();
        assert!(e.contains("no column nope"), "{e}");
        assert!(parse_overrides(&["src".into()]).is_err());
        assert!(parse_overrides(&["bogus=x".into()]).is_err());
        assert!(parse_overrides(&["src=x; DROP TABLE cdr".into()]).is_err());
        assert!(TableName::parse("cdr; DROP").is_err());
        assert!(TableName::parse("a.b.c").is_err());
        assert!(Mapping::new(&t, &[], &[])
            .unwrap_err()
            .contains("not found"));
    }

    #[test]
    fn queries_quote_and_keyset() {
        let t = TableName::parse("cdr").unwrap();
        let mut have = cols(&[
            "start", "src", "dst", "channel", "uniqueid", "sequence", "end",
        ]);
        have[6].data_type = "timestamp with time zone".into();
        let m = Mapping::new(&t, &have, &[]).unwrap();
        let my = select(DbKind::MySql, &t, &m);
        assert_eq!(
            my,
            "SELECT CAST(`src` AS CHAR), CAST(`dst` AS CHAR), CAST(`channel` AS CHAR), CAST(`start` AS CHAR), \
             CAST(`end` AS CHAR), CAST(`uniqueid` AS CHAR), CAST(`sequence` AS CHAR) FROM `cdr` \
             WHERE `start` >= ? AND (`start` > ? OR COALESCE(`uniqueid`, '') >= ?) \
             ORDER BY `start`, COALESCE(`uniqueid`, ''), `sequence`"
        );
        let pg = select(DbKind::Postgres, &t, &m);
        assert!(pg.contains("((\"end\")::timestamp)::text"), "{pg}");
        assert!(
            pg.contains("WHERE \"start\" >= CAST($1 AS timestamp without time zone) AND (\"start\" > CAST($1 AS timestamp without time zone) OR COALESCE((\"uniqueid\")::text, '') >= $2)"),
            "{pg}"
        );
        let m = Mapping::new(&t, &cols(&["calldate", "src", "dst", "channel"]), &[]).unwrap();
        let my = select(DbKind::MySql, &t, &m);
        assert!(
            my.ends_with("WHERE `calldate` >= ? ORDER BY `calldate`"),
            "{my}"
        );
    }
}
