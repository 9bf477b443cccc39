//! The database URL: which server, which credentials, and how it is shown.
//!
//! `mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (also `mariadb://`) or
//! `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (also `postgresql://`),
//! with the drivers' own query parameters (`?ssl-mode=required`,
//! `?sslmode=require`, …). The password is taken out of the URL as soon as
//! it is parsed: the driver is given it separately, and every message shows
//! the URL as `USER:***@HOST…` ([`DbUrl::shown`]), and passes any text that
//! might quote it through [`DbUrl::mask`].

use std::str::FromStr;

use percent_encoding::percent_decode_str;
use sqlx::mysql::MySqlConnectOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions;

use crate::values::Secret;

/// Which server speaks at the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// MySQL or MariaDB (`cdr_mysql`, `cdr_adaptive_odbc`).
    MySql,
    /// PostgreSQL (`cdr_pgsql`, `cdr_adaptive_odbc`).
    Postgres,
}

/// A parsed database URL without its password (see the module docs).
#[derive(Clone)]
pub struct DbUrl {
    kind: DbKind,
    /// The URL with no password in it.
    url: url::Url,
    password: Option<Secret>,
    /// The password as written in the URL (and as the URL parser
    /// re-encoded it), to mask.
    written: Vec<String>,
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

impl DbUrl {
    /// Parses `text`. The error never contains the password.
    pub fn parse(text: &str) -> Result<DbUrl, String> {
        let text = text.trim();
        let mut url = url::Url::parse(text).map_err(|e| {
            format!("not a database URL ({e}): write mysql://USER@HOST/DATABASE or postgres://USER@HOST/DATABASE")
        })?;
        let kind = match url.scheme().to_ascii_lowercase().as_str() {
            "mysql" | "mariadb" => DbKind::MySql,
            "postgres" | "postgresql" => DbKind::Postgres,
            other => {
                return Err(format!(
                    "unsupported database {other:?}: write mysql:// (MySQL, MariaDB) or postgres:// (PostgreSQL)"
                ))
            }
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the database URL names no host (mysql://USER@HOST/DATABASE)".into());
        }
        let encoded = url.password().map(str::to_string);
        let password = encoded
            .as_deref()
            .map(|p| Secret::new(percent_decode_str(p).decode_utf8_lossy().into_owned()));
        let mut written: Vec<String> = encoded.into_iter().collect();
        // As typed: between `user:` and the last `@` of the authority.
        if let Some((_, rest)) = text.split_once("://") {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                if let Some((_, pw)) = userinfo.split_once(':') {
                    written.push(pw.to_string());
                }
            }
        }
        // Keep the password out of the URL from here on.
        let _ = url.set_password(None);
        if kind == DbKind::MySql && url.scheme() != "mysql" {
            // The driver only knows `mysql://`.
            let rest = url.as_str().split_once("://").map(|(_, r)| r.to_string());
            if let Some(rest) = rest {
                url = url::Url::parse(&format!("mysql://{rest}")).map_err(|e| e.to_string())?;
            }
        }
        Ok(DbUrl {
            kind,
            url,
            password,
            written,
        })
    }

    /// The server kind.
    pub fn kind(&self) -> DbKind {
        self.kind
    }

    /// Whether the URL carried a password.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// Uses `password` (from a file or the environment) unless the URL had
    /// one.
    pub fn or_password(mut self, password: Secret) -> Self {
        if self.password.is_none() {
            self.password = Some(password);
        }
        self
    }

    /// The URL as shown in messages: `mysql://cdr:***@db:3306/asteriskcdrdb`.
    pub fn shown(&self) -> String {
        let mut u = self.url.clone();
        if self.password.is_some() {
            let _ = u.set_password(Some("***"));
        }
        // Query parameters may carry credentials too (`password=`).
        if u.query().is_some() {
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let secret = k.to_ascii_lowercase().contains("pass");
                    (
                        k.into_owned(),
                        if secret { "***".into() } else { v.into_owned() },
                    )
                })
                .collect();
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        u.to_string()
    }

    /// `text` with every form of the password replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        let mut forms: Vec<String> = self.written.clone();
        forms.extend(self.password.as_ref().map(|p| p.expose().to_string()));
        // Longest first, so that no form leaves a piece of a longer one.
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        for f in forms {
            if f.len() >= 2 {
                out = out.replace(&f, "***");
            }
        }
        out
    }

    /// A name for this server, database and table that holds no
    /// credentials: the saved cursor's file name.
    pub fn slug(&self, table: &str) -> String {
        let kind = match self.kind {
            DbKind::MySql => "mysql",
            DbKind::Postgres => "postgres",
        };
        let host = self.url.host_str().unwrap_or("");
        let port = self.url.port().map(|p| p.to_string()).unwrap_or_default();
        let db = self.url.path().trim_start_matches('/');
        let raw = format!("{kind}-{host}-{port}-{db}-{table}");
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// MySQL/MariaDB connection options.
    pub(super) fn mysql(&self) -> Result<MySqlConnectOptions, String> {
        let mut o = MySqlConnectOptions::from_str(self.url.as_str())
            .map_err(|e| self.mask(&e.to_string()))?;
        if let Some(p) = &self.password {
            o = o.password(p.expose());
        }
        Ok(o.disable_statement_logging())
    }

    /// PostgreSQL connection options.
    pub(super) fn postgres(&self) -> Result<PgConnectOptions, String> {
        let mut o =
            PgConnectOptions::from_str(self.url.as_str()).map_err(|e| self.mask(&e.to_string()))?;
        if let Some(p) = &self.password {
            o = o.password(p.expose());
        }
        Ok(o.application_name("callhook-backfill")
            .disable_statement_logging())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let u =
            DbUrl::parse("mysql://cdr:s%40cr3t:x@db.example:3306/asteriskcdrdb?ssl-mode=required")
                .unwrap();
        assert_eq!(u.kind(), DbKind::MySql);
        let shown = u.shown();
        assert!(
            !shown.contains("s%40cr3t") && !shown.contains("s@cr3t"),
            "{shown}"
        );
        assert!(
            shown.contains("cdr:***@db.example:3306/asteriskcdrdb"),
            "{shown}"
        );
        assert_eq!(
            u.mask("Access denied: s@cr3t:x and s%40cr3t:x"),
            "Access denied: *** and ***"
        );
        assert!(!format!("{u:?}").contains("cr3t"));
        assert_eq!(u.slug("cdr"), "mysql-db.example-3306-asteriskcdrdb-cdr");
        let q = DbUrl::parse("postgres://cdr@db/cdr?password=hunter22&sslmode=require").unwrap();
        assert!(!q.shown().contains("hunter22"), "{}", q.shown());
    }

    #[test]
    fn schemes_and_bad_urls() {
        assert_eq!(
            DbUrl::parse("mariadb://cdr@db/x").unwrap().kind(),
            DbKind::MySql
        );
        assert!(DbUrl::parse("mariadb://cdr@db/x").unwrap().mysql().is_ok());
        assert_eq!(
            DbUrl::parse("postgresql://cdr@db/x").unwrap().kind(),
            DbKind::Postgres
        );
        let e = DbUrl::parse("sqlite://x:pw123@h/db").unwrap_err();
        assert!(e.contains("unsupported") && !e.contains("pw123"), "{e}");
        let e = DbUrl::parse("not a url pw123").unwrap_err();
        assert!(!e.contains("pw123"), "{e}");
        let u = DbUrl::parse("postgres://cdr@db/x")
            .unwrap()
            .or_password(Secret::new("fromfile"));
        assert!(u.has_password());
        assert_eq!(u.mask("x fromfile y"), "x *** y");
    }
}
